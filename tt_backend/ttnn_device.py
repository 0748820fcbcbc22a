"""Matmuls on a real Tenstorrent card through ttnn (`--tt_device auto|on`). UNTESTED here: ttnn has no wheel for this
project's Python (3.11) and no card is available; everything around it (the capability check, the errors) is tested.

With a card present, `DeviceTTEngine` runs every Linear (q/k/v, o, gate, up, down, lm_head) as `ttnn.matmul` on
the device, with the config's weight dtype (bfloat8_b / bfloat4_b / bfloat16; bfloat2_b has no ttnn dtype and is
refused) and a WormholeComputeKernelConfig carrying the op group's math fidelity and fp32 accumulation; norms,
RoPE, attention and the KV cache stay in the CPU emulation (engine.py).
"""
from __future__ import annotations

import importlib.util
import os

import torch

from ..errors import UserError
from .engine import TTEngine


def unavailable_reason() -> str | None:
    """None when ttnn is importable and sees at least one real (not mock) device."""
    if importlib.util.find_spec("ttnn") is None:
        return ("ttnn is not installed (pip install ttnn; Tenstorrent publishes wheels for CPython 3.10 and 3.12, "
                "not for the Python 3.11 this project is tested on)")
    if os.environ.get("TT_METAL_MOCK_CLUSTER_DESC_PATH"):
        return "TT_METAL_MOCK_CLUSTER_DESC_PATH is set: ttnn is running against a mock cluster, not a card"
    import ttnn

    if ttnn.GetNumAvailableDevices() == 0:
        return "ttnn finds no Tenstorrent device on this machine"
    return None


def require_device() -> None:
    reason = unavailable_reason()
    if reason:
        raise UserError(f"--tt_device on needs a Tenstorrent card through ttnn: {reason}.",
                        "Use --tt_device auto or off to run the CPU emulation of the card's numerics.")


class DeviceTTEngine(TTEngine):
    """TTEngine whose Linears run on device 0 (see the module docstring)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        import ttnn

        self.name = f"tt-device ({self.config.name})"
        self.ttnn = ttnn
        self.device = ttnn.open_device(device_id=0)
        dtypes = {"bfp8": ttnn.bfloat8_b, "bfp4": ttnn.bfloat4_b, "bf16": ttnn.bfloat16}
        self.on_device = {}
        for name, fmt in self.weights.formats.items():
            if fmt not in dtypes:
                raise UserError(f"ttnn has no dtype for {fmt} (tensor {name}).",
                                "Use bfp4, bfp8 or bf16 for the tensors that run on the card.")
            self.on_device[name] = ttnn.as_tensor(
                self.weights.tensors[name], dtype=dtypes[fmt], layout=ttnn.TILE_LAYOUT, device=self.device,
                cache_file_name=str(self.weights.folder / "ttnn" / f"{name}.{fmt}"))

    def linear(self, x: torch.Tensor, name: str, fidelity: tuple[str, bool]) -> torch.Tensor:
        ttnn = self.ttnn
        config = ttnn.WormholeComputeKernelConfig(math_fidelity=getattr(ttnn.MathFidelity, fidelity[0]),
                                                  math_approx_mode=False, fp32_dest_acc_en=fidelity[1],
                                                  packer_l1_acc=True)
        xt = ttnn.from_torch(x.to(torch.bfloat16), dtype=ttnn.bfloat16, layout=ttnn.TILE_LAYOUT, device=self.device)
        y = ttnn.matmul(xt, self.on_device[name], compute_kernel_config=config, dtype=ttnn.bfloat16)
        return ttnn.to_torch(y).float().reshape(*x.shape[:-1], -1)

    def close(self) -> None:
        self.ttnn.close_device(self.device)
