"""Inverse problems: measurement operators by capability level and posterior samplers.

    from polydiff.core.inverse import MatrixOperator, posterior_sample, methods
    x = posterior_sample(D, y, MatrixOperator(A), path=path, method="ddrm", steps=100, sigma_y=0.3, generator=g)
"""
from .operators import (LEVELS, BlockAverage, CallableOperator, Compose, FFTConvolution, LinearCallableOperator,
                        LinearCompose, LinearOperator, MaskOperator, MatrixOperator, Operator, PartialFourier,
                        PseudoInverseOperator, SVDOperator, conjugate_gradient, level_rank)

__all__ = ["LEVELS", "level_rank", "conjugate_gradient", "Operator", "LinearOperator", "PseudoInverseOperator",
           "SVDOperator", "MatrixOperator", "MaskOperator", "BlockAverage", "FFTConvolution", "PartialFourier",
           "Compose", "LinearCompose", "CallableOperator", "LinearCallableOperator"]
from .base import GaussianNoise, MethodInfo, PoissonNoise, get_method, methods, posterior_sample  # noqa: E402
from . import spectral, guided, splitting  # noqa: E402,F401  (register the methods)

__all__ += ["posterior_sample", "methods", "get_method", "MethodInfo", "GaussianNoise", "PoissonNoise"]
