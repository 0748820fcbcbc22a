"""Precision configs: the tt-metal demo defaults per family, JSON files with per-layer overrides, and errors."""
from __future__ import annotations

import json

import pytest

from edgeawq.errors import UserError
from edgeawq.tt_backend.precision import DEFAULT_OPS, DEFAULT_TENSORS, load_precision, with_mlp


def test_performance_is_bfp4_lofi_gate_up_on_the_defaults():
    cfg = load_precision("performance", "llama", 3)
    for layer in cfg.layers:
        assert layer.tensors == {**DEFAULT_TENSORS, "ff1_3": "bfp4"}
        assert layer.ops == {**DEFAULT_OPS, "li_ff1_3": "lofi"}
        assert layer.fidelity("li_ff1_3") == ("LoFi", False)
        assert layer.fidelity("li_ff2") == ("HiFi2", False)          # hifi2fp16: bf16 accumulation
        assert layer.fidelity("sdpa_prefill") == ("HiFi4", True)
    assert (cfg.lm_head, cfg.li_lm_head) == ("bfp8", "hifi2")


def test_accuracy_depends_on_the_family():
    llama = load_precision("accuracy", "llama", 2).layers[0]
    assert llama.tensors == DEFAULT_TENSORS and llama.ops == DEFAULT_OPS    # bfp8 attention and KV, MLP hifi2fp16
    qwen = load_precision("accuracy", "qwen2", 2).layers[0]
    assert qwen.tensors["wqkv"] == qwen.tensors["wo"] == qwen.tensors["kv_cache"] == "bf16"
    assert qwen.tensors["ff1_3"] == "bfp8"
    assert all(qwen.ops[k] == "hifi4" for k in ("li_qkv_decode", "li_o_prefill", "sdpa_decode"))


def test_file_with_base_and_per_layer_overrides(tmp_path):
    f = tmp_path / "mine.json"
    f.write_text(json.dumps({"base": "accuracy", "tensor_precision": {"ff2": "bfp4"}, "op_fidelity": {"li_ff2": "hifi3"},
                             "decoders": {"1": {"tensor_precision": {"wqkv": "bf16"},
                                                "op_fidelity": {"li_qkv_decode": "hifi4"}}},
                             "lm_head": "bf16"}))
    cfg = load_precision(str(f), "llama", 3)
    assert cfg.name == "mine" and cfg.lm_head == "bf16"
    assert [l.tensors["ff2"] for l in cfg.layers] == ["bfp4"] * 3
    assert all(l.fidelity("li_ff2") == ("HiFi3", True) for l in cfg.layers)
    assert [l.tensors["wqkv"] for l in cfg.layers] == ["bfp8", "bf16", "bfp8"]
    assert [l.ops["li_qkv_decode"] for l in cfg.layers] == ["hifi2", "hifi4", "hifi2"]
    assert "layers 1 differ" in cfg.describe()
    assert cfg.to_json()["layers"][1]["tensor_precision"]["wqkv"] == "bf16"


def test_with_mlp_changes_only_the_mlp_formats():
    base = load_precision("accuracy", "llama", 2)
    swept = with_mlp(base, "bfp4", "bfp8", "bfp4/bfp8")
    assert swept.layers[0].tensors == {**base.layers[0].tensors, "ff1_3": "bfp4", "ff2": "bfp8"}
    assert swept.layers[0].ops == base.layers[0].ops


@pytest.mark.parametrize("content, needle", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "must hold a JSON object"),
    ('{"colour": "red"}', "unknown key(s) colour"),
    ('{"base": "fast"}', "base 'fast'"),
    ('{"tensor_precision": {"ff4": "bfp8"}}', "unknown tensor_precision key 'ff4'"),
    ('{"tensor_precision": {"ff2": "int4"}}', "ff2 = 'int4'"),
    ('{"op_fidelity": {"li_ff2": "hifi9"}}', "li_ff2 = 'hifi9'"),
    ('{"tensor_precision": {"activation": "bfp4"}}', "activation must be bf16 or bfp8"),
    ('{"decoders": {"5": {}}}', "not a layer of this model (0..2)"),
    ('{"decoders": {"0": {"weights": {}}}}', "may only hold"),
])
def test_bad_files_are_named(tmp_path, content, needle):
    f = tmp_path / "bad.json"
    f.write_text(content)
    with pytest.raises(UserError) as exc:
        load_precision(str(f), "llama", 3)
    assert needle in str(exc.value)


def test_unknown_name():
    with pytest.raises(UserError, match="neither a named config nor an existing file"):
        load_precision("fast", "llama", 2)
