"""nn.Linear with vitlab's CPU GEMM paths (oneDNN; see vitlab.layers.cpu_kernels for what they are and buy).

Parameters, state-dict keys and initialisation are nn.Linear's; results equal it to the rounding of a different
summation order. `freeze_for_inference(model)` (vitlab predict, eval and bench call it) lets each Linear keep its
weight in oneDNN's blocked layout between inference calls, packed once instead of reordered inside every GEMM. The
packed copy lives on the module, follows in-place updates made through the parameter (they bump its version) and
moves; writes through `.data` bypass the version counter: call freeze_for_inference again.
"""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from . import cpu_kernels


class Linear(nn.Linear):
    """nn.Linear; x (..., in_features) -> (..., out_features)."""

    frozen = False           # freeze_for_inference: keep the packed weight between inference calls

    def forward(self, x: Tensor) -> Tensor:
        out = cpu_kernels.linear(self, x, self.frozen)
        return F.linear(x, self.weight, self.bias) if out is None else out


def freeze_for_inference(model: nn.Module, frozen: bool = True) -> nn.Module:
    """Declare `model`'s weights constant for inference (see the module docstring); returns `model`. Also drops
    packed copies made before, so it doubles as the refresh after writes through `.data`."""
    for m in model.modules():
        if isinstance(m, Linear):
            m.frozen = frozen
            cpu_kernels.drop_packed(m)
    return model
