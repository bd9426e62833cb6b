"""Shared test set-up: one torch intra-op thread per test process.

The tests' tensors are small (at most ~1e5 elements), so a second thread buys nothing on an idle
two-core machine (measured: equal times), while any other load on the cores (``pytest -n 2``, whose
two workers would run four spinning threads on two cores, or a neighbour's job) made the sampling
tests 4 to 10 times slower with two threads. Set for the whole session (after collection), so that a
test module's own ``torch.set_num_threads`` at import does not decide it for every other module.
"""
from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    torch.set_num_threads(1)
