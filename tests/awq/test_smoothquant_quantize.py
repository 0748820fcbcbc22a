"""`run_awq quantize --algorithm smoothquant`: the W8A8 checkpoint it writes, how it loads, and the flags it refuses."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from edgeawq.errors import UserError
from edgeawq.evaluation.parity import pcc
from edgeawq.kernels.qlinear import QLinearPerGrp
from edgeawq.runtime.model_loader import load_model
from edgeawq.runtime.quantized_model import QuantLayout
from edgeawq.runtime.families import FAMILIES

from ..conftest import quantize_tiny

PROMPT = torch.arange(5, 45)[None]                   # (1, 40)


@pytest.mark.parametrize("family", ["llama2", "llama3"])                 # MHA (v -> o smoothed) and GQA
@pytest.mark.parametrize("mode", ["per_token", "per_tensor"])
def test_the_checkpoint_holds_int8_channels_and_static_scales(checkpoints, tmp_path, family, mode):
    out = tmp_path / "sq"
    summary = quantize_tiny(checkpoints[family], out, w_bit=None, group_size=None, zero_point=True,
                            algorithm="smoothquant", awq_mode="run", act_quant=mode, sq_alpha=0.6)
    assert summary["bits"] == 8 and summary["group_size"] == -1 and summary["algorithm"] == "smoothquant"
    q = json.loads((out / "config.json").read_text())["quantization_config"]
    assert (q["bits"], q["group_size"], q["zero_point"], q["packing"], q["lm_head"]) == (8, -1, False, "u8", False)
    assert q["act_quant"]["mode"] == mode and q["act_quant"]["alpha"] == 0.6 and q["awq"] is None
    tensors = load_file(out / "model.safetensors")
    family_ = FAMILIES["llama"]
    scales = {k: v for k, v in tensors.items() if k.endswith(".act_scale")}
    layers = 2
    assert len(scales) == (7 * layers if mode == "per_tensor" else 0)
    for name, s in scales.items():
        assert s.dtype == torch.float32 and s.shape == (1,) and s.item() > 0, name
    for i in range(layers):
        zeros = tensors[f"model.layers.{i}.{family_.linears[0]}.zeros"]
        assert torch.equal(zeros, torch.full_like(zeros, 128))                   # symmetric
    loaded = load_model(out, "fp32", "fp32")
    qlinears = [m for m in loaded.model.modules() if isinstance(m, QLinearPerGrp)]
    assert len(qlinears) == 7 * layers and {m.act_quant for m in qlinears} == {mode}
    assert not isinstance(loaded.model.lm_head, QLinearPerGrp)
    quantize_tiny(checkpoints[family], tmp_path / "w4", algorithm="pergrp", awq_mode="none")
    with torch.no_grad():
        got, want = loaded.model(PROMPT).logits, load_model(checkpoints[family], "fp32").model(PROMPT).logits
        w4 = load_model(tmp_path / "w4", "fp32", "fp32").model(PROMPT).logits
    assert pcc(got, want) >= max(0.99, pcc(w4, want))  # W8A8 tracks the float model better than RTN w4 g32
    assert not torch.allclose(got, want, atol=1e-4)    # and is not the float model


def test_explicit_int8_channel_flags_are_accepted(checkpoints, tmp_path):
    summary = quantize_tiny(checkpoints["llama3"], tmp_path / "sq", w_bit=8, group_size=-1, zero_point=False,
                            algorithm="smoothquant", awq_mode="run")
    assert summary["bits"] == 8 and summary["group_size"] == -1


@pytest.mark.parametrize("flags, needle", [
    (["--algorithm", "smoothquant", "--w_bit", "4"], "quantizes weights to int8 per output channel, not --w_bit 4"),
    (["--algorithm", "smoothquant", "--group_size", "128"], "not --w_bit 8 --group_size 128"),
    (["--algorithm", "smoothquant", "--lm_head"], "keeps lm_head in float"),
    (["--algorithm", "smoothquant", "--sq_alpha", "1.5"], "--sq_alpha 1.5 is outside [0, 1]"),
    (["--algorithm", "smoothquant", "--dump_awq", "s.pt"], "--dump_awq is an AWQ option, but --algorithm smoothquant"),
    (["--algorithm", "smoothquant", "--gptq_damp", "0.1"], "--gptq_damp is a GPTQ option"),
    (["--algorithm", "smoothquant", "--export", "awq"], "AutoAWQ"),
    (["--sq_alpha", "0.5"], "--sq_alpha is a SmoothQuant option, but --algorithm is awq"),
    (["--algorithm", "gptq", "--act_quant", "per_tensor"], "--act_quant is a SmoothQuant option, but --algorithm is gptq"),
])
def test_flags_smoothquant_cannot_honour_are_refused(checkpoints, tmp_path, cli, monkeypatch, flags, needle):
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(["quantize", "--model", str(checkpoints["llama3"]), "--out", str(tmp_path / "q")] + flags)
    assert code == 2 and needle in err and "Traceback" not in err, err
    assert not (tmp_path / "q").exists() and not (tmp_path / "s.pt").exists()


def test_a_w8a8_config_that_does_not_add_up_is_refused(tmp_path):
    base = {"bits": 8, "group_size": -1, "zero_point": False, "act_quant": {"mode": "per_tensor", "alpha": 0.5}}
    assert QuantLayout.from_config(base, FAMILIES["llama"], tmp_path).act_quant == "per_tensor"
    for bad in ({**base, "bits": 4}, {**base, "act_quant": {"mode": "per_channel"}}, {**base, "act_quant": {}},
                {**base, "lm_head": True, "lm_head_group_size": 32}):
        with pytest.raises(UserError, match="W8A8|incomplete"):
            QuantLayout.from_config(bad, FAMILIES["llama"], tmp_path)


def test_the_aie_numerics_refuse_a_w8a8_checkpoint(checkpoints, tmp_path):
    quantize_tiny(checkpoints["llama3"], tmp_path / "sq", w_bit=None, group_size=None, algorithm="smoothquant",
                  awq_mode="run")
    with pytest.raises(UserError, match="--act_dtype aie"):
        load_model(tmp_path / "sq", "fp32", "aie")
