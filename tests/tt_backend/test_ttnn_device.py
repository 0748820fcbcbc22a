"""--tt_device auto|on|off: the capability check and its errors (this machine has neither ttnn nor a card), and the wiring of
DeviceTTEngine against a stand-in ttnn module whose matmul is the project's own fidelity emulation. The real
ttnn calls are untested here (see tt_backend/ttnn_device.py)."""
from __future__ import annotations

import importlib.util
import json
import sys
import types

import pytest
import torch

from edgeawq.errors import UserError
from edgeawq.runtime.model_loader import load_model
from edgeawq.tt_backend import ttnn_device
from edgeawq.tt_backend.backend import make_tt_engine
from edgeawq.tt_backend.fidelity import fidelity_matmul

from ..test_cli import assert_user_error, run


def fake_ttnn(devices: int) -> types.ModuleType:
    m = types.ModuleType("ttnn")
    m.bfloat8_b, m.bfloat4_b, m.bfloat16, m.TILE_LAYOUT = "bfp8", "bfp4", "bf16", "tile"
    m.MathFidelity = types.SimpleNamespace(LoFi="LoFi", HiFi2="HiFi2", HiFi3="HiFi3", HiFi4="HiFi4")
    m.GetNumAvailableDevices = lambda: devices
    m.WormholeComputeKernelConfig = lambda **kw: kw
    m.open_device = lambda device_id: "device0"
    m.close_device = lambda device: None
    m.as_tensor = lambda t, dtype, layout, device, cache_file_name: t.clone()
    m.from_torch = lambda x, dtype, layout, device: x.float()
    m.matmul = lambda a, b, compute_kernel_config, dtype: fidelity_matmul(
        a, b, compute_kernel_config["math_fidelity"], compute_kernel_config["fp32_dest_acc_en"])
    m.to_torch = lambda y: y
    return m


@pytest.fixture
def with_fake_ttnn(monkeypatch):
    def install(devices: int):
        monkeypatch.setitem(sys.modules, "ttnn", fake_ttnn(devices))
        real = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "ttnn" else real(name, *a))
    return install


def test_cli_without_ttnn(checkpoints, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ttnn" else real(name, *a))
    code, _, err = run(["--task", "decode", "--target", "tt", "--tt_device", "on", "--model",
                        str(checkpoints["llama3"]), "--prompt", "x", "--max_new_tokens", "2"], capsys)
    assert_user_error(code, err, "ttnn is not installed", "Use --tt_device auto or off")
    code, out, err = run(["--task", "decode", "--target", "tt", "--model", str(checkpoints["llama3"]), "--prompt", "x",
                          "--max_new_tokens", "2", "--ignore_eos"], capsys)         # auto: the emulation
    assert code == 0 and "[tt] CPU emulation" in err


def test_no_card_and_mock_cluster_are_refused(with_fake_ttnn, monkeypatch):
    with_fake_ttnn(devices=0)
    with pytest.raises(UserError, match="finds no Tenstorrent device"):
        ttnn_device.require_device()
    monkeypatch.setenv("TT_METAL_MOCK_CLUSTER_DESC_PATH", "/tmp/n150.yaml")
    with pytest.raises(UserError, match="mock cluster"):
        ttnn_device.require_device()


def test_device_engine_wiring_matches_the_emulation(checkpoints, with_fake_ttnn, capsys):
    with_fake_ttnn(devices=1)
    ids = torch.tensor([list(range(10, 22))])
    outs = []
    for device in ("off", "on"):
        engine = make_tt_engine(load_model(checkpoints["qwen2"], "fp32", "fp32"), "performance", device=device)
        engine.start(1, 16)
        outs.append(engine.forward(ids, torch.arange(12)[None], torch.ones_like(ids), last_only=False))
        assert engine.name == ("tt-device (performance)" if device == "on" else "tt-emulation (performance)")
    assert "Linears on the Tenstorrent card" in capsys.readouterr().err
    assert torch.equal(outs[0], outs[1])


def test_bfp2_has_no_ttnn_dtype(checkpoints, with_fake_ttnn, tmp_path):
    with_fake_ttnn(devices=1)
    spec = tmp_path / "p.json"
    spec.write_text(json.dumps({"tensor_precision": {"ff2": "bfp2"}}))
    with pytest.raises(UserError, match="no dtype for bfp2"):
        make_tt_engine(load_model(checkpoints["llama3"], "fp32", "fp32"), str(spec), device="on")


@pytest.mark.parametrize("devices, expected", [(1, "Linears on the Tenstorrent card"), (0, "CPU emulation")])
def test_auto_uses_the_card_only_when_ttnn_sees_one(checkpoints, with_fake_ttnn, capsys, devices, expected):
    with_fake_ttnn(devices=devices)
    make_tt_engine(load_model(checkpoints["llama3"], "fp32", "fp32"), "accuracy", device="auto")
    assert f"[tt] {expected}" in capsys.readouterr().err
