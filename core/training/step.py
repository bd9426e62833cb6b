"""One optimizer step for hand-written training loops (the domain trainers); :class:`Trainer` has its own,
with accumulation and mixed precision."""
from __future__ import annotations

from typing import Optional

import torch


def gradient_step(opt: torch.optim.Optimizer, loss: torch.Tensor, *, lr: Optional[float] = None,
                  clip: float = 1.0, step: Optional[int] = None) -> torch.Tensor:
    """Backpropagate the scalar ``loss`` and step ``opt``; returns the gradient norm before clipping.

    FloatingPointError for a non-finite loss (stepping would spread NaNs into the weights; ``step`` only
    names the step in the message). Sets every parameter group's learning rate to ``lr`` when given,
    zeroes the gradients, backpropagates, clips the global norm over the optimizer's parameters at
    ``clip`` (``math.inf``: no clipping), and skips the update when that norm is not finite (an overflow
    in one batch then costs one step, not the run)."""
    if loss.dim() != 0:
        raise ValueError(f"need a scalar loss, got shape {tuple(loss.shape)}")
    if not torch.isfinite(loss.detach()):
        where = f" at step {step}" if step is not None else ""
        raise FloatingPointError(f"non-finite loss{where}: {float(loss.detach())}")
    if lr is not None:
        for group in opt.param_groups:
            group["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for group in opt.param_groups for p in group["params"] if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, clip)
    if torch.isfinite(norm):
        opt.step()
    return norm
