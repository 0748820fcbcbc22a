"""int8 activation quantization of a Linear's input (SmoothQuant W8A8 checkpoints; docs/quantization.md
(SmoothQuant)), the pure-PyTorch reference of what the fast engines compute.

Modes (quantization_config "act_quant": {"mode": ...}):

  per_token   one scale per row of x (..., K):   s = max_k |x| / 127,  q = round(x * (1/s))   (q = 0 when s = 0)
  per_tensor  one static scale s from calibration (the Linear's `act_scale` buffer, float32 (1,)):
                                                 q = clamp(round(x * (1/s)), -127, 127)

`round` is round-half-to-even; 1/s is taken in float32 and multiplied (as the native kernels do), so the integer
codes q match theirs exactly. The Linear then sees x_hat = q * s (float32): y = x_hat @ W^T is what an int8 x int8
matmul with int32 accumulation gives once rescaled by s and the weight scales.
"""
from __future__ import annotations

import torch

ACT_QUANT_MODES = ("per_token", "per_tensor")
QMAX = 127.0


def activation_codes(x: torch.Tensor, mode: str, act_scale: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """x (..., K) -> (q (..., K) float32 integer values in [-127, 127], s float32: (..., 1) per token or (1,))."""
    xf = x.float()
    if mode == "per_token":
        s = xf.abs().amax(dim=-1, keepdim=True) / QMAX                      # (..., 1)
        inv = torch.where(s > 0, 1.0 / s, torch.zeros_like(s))
    elif mode == "per_tensor":
        if act_scale is None:
            raise ValueError("per_tensor activation quantization needs the calibrated act_scale")
        s = act_scale.float().reshape(1)                                     # (1,)
        inv = 1.0 / s
    else:
        raise ValueError(f"unknown activation quantization mode {mode!r}")
    q = torch.round(xf * inv).clamp(-QMAX, QMAX)                             # (..., K)
    return q, s


def fake_quantize_activations(x: torch.Tensor, mode: str, act_scale: torch.Tensor | None = None) -> torch.Tensor:
    """x (..., K) -> x_hat = q * s (..., K) float32 (see the module docstring)."""
    q, s = activation_codes(x, mode, act_scale)
    return q * s
