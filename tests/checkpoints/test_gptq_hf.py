"""GPTQ checkpoints in the Hugging Face layout (checkpoints/gptq_hf.py) load and run on every target exactly as the
native checkpoint holding the same codes; what the native layout cannot hold is a clear error."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from edgeawq.kernels.quantizer import QuantSpec, quantize
from edgeawq.runtime.backends import EngineOptions, require
from edgeawq.runtime.engines import make_engine
from edgeawq.runtime.families import FAMILIES
from edgeawq.runtime.model_loader import load_model

from ..conftest import quantize_tiny

LINEARS = FAMILIES["llama"].linears
IDS = torch.tensor([[1, 57, 300, 12, 999, 4, 77, 5]])                           # (1, T)


def pack_words(codes: np.ndarray, bits: int) -> np.ndarray:
    """uint codes (R, C) -> int32 (R * bits / 32, C): 32 / bits consecutive rows per word, first row lowest."""
    per = 32 // bits
    rows = codes.astype(np.uint64).reshape(codes.shape[0] // per, per, codes.shape[1])
    words = sum(rows[:, j, :] << np.uint64(j * bits) for j in range(per))
    return np.ascontiguousarray(words.astype(np.uint32).view(np.int32))


def write_gptq_folder(src: Path, dst: Path, bits: int, group: int, fmt: str = "gptq_v2", sym: bool = False,
                      g_idx=None, drop: str | None = None) -> Path:
    """`dst`: the float checkpoint `src` with every decoder Linear RTN-quantized and stored as AutoGPTQ does."""
    dst.mkdir(parents=True)
    state = load_file(str(src / "model.safetensors"))
    out = {}
    for key, t in state.items():
        name = key.removesuffix(".weight")
        if not (key.endswith(".weight") and name.endswith(LINEARS)) or name == drop:
            out[key] = t
            continue
        qw = quantize(t, QuantSpec(bits, group, zero_point=not sym))
        K = t.shape[1]
        g = K if group == -1 else group
        stored = qw.zeros.numpy().astype(np.int64) - (1 if fmt == "gptq" else 0)    # (N, G)
        out[name + ".qweight"] = torch.from_numpy(pack_words(np.ascontiguousarray(qw.codes.numpy().T), bits))           # (K*b/32, N)
        out[name + ".qzeros"] = torch.from_numpy(pack_words((stored & (2 ** bits - 1)), bits).T.copy())  # (G, N*b/32)
        out[name + ".scales"] = qw.scales.t().contiguous()                                        # (G, N)
        out[name + ".g_idx"] = torch.arange(K, dtype=torch.int32) // g if g_idx is None else g_idx(K, g)
    save_file(out, str(dst / "model.safetensors"))
    config = json.loads((src / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gptq", "bits": bits, "group_size": group, "desc_act": False,
                                     "sym": sym, "checkpoint_format": fmt, "true_sequential": True}
    (dst / "config.json").write_text(json.dumps(config))
    for f in src.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")) or f.name == "generation_config.json":
            shutil.copy(f, dst / f.name)
    return dst


def _logits(path, target: str | None = None, **options) -> torch.Tensor:
    loaded = load_model(path, "fp32", "fp32")
    engine = make_engine(loaded, True) if target is None else require(target).make_engine(loaded,
                                                                                          EngineOptions(**options))
    engine.start(1, IDS.shape[1])
    return engine.forward(IDS, torch.arange(IDS.shape[1])[None], torch.ones_like(IDS))[0].float()


@pytest.mark.parametrize("bits, group, fmt, sym", [(4, 32, "gptq_v2", False), (4, 32, "gptq", True),
                                                   (8, -1, "gptq_v2", False)])
def test_gptq_folder_runs_like_the_native_checkpoint_of_the_same_codes(checkpoints, tmp_path, monkeypatch, bits,
                                                                       group, fmt, sym):
    monkeypatch.setenv("EDGEAWQ_CACHE", str(tmp_path / "cache"))
    src = checkpoints["llama3"]
    gptq = write_gptq_folder(src, tmp_path / "gptq", bits, group, fmt, sym)
    native = tmp_path / "native"
    quantize_tiny(src, native, w_bit=bits, group_size=group, zero_point=not sym, algorithm="pergrp", awq_mode="none")
    assert torch.equal(_logits(gptq), _logits(native))
    targets = {"cpu native": ("cpu", {"engine": "native"}), "tt accuracy": ("tt", {"tt_precision": "accuracy"})}
    if group != -1:                             # MatMulNBits holds power-of-two blocks only (auto picks native)
        targets |= {"cpu onnx": ("cpu", {"engine": "onnx"}), "npu": ("npu", {"onnx_dir": tmp_path / "npu"})}
    for label, (target, options) in targets.items():
        if "onnx_dir" in options:
            options = {"onnx_dir": tmp_path / "npu-gptq"}
        got = _logits(gptq, target, **options)
        if "onnx_dir" in options:
            options = {"onnx_dir": tmp_path / "npu-native"}
        assert torch.equal(got, _logits(native, target, **options)), label


@pytest.mark.parametrize("case, needle", [
    ("3-bit", "3-bit weights"),
    ("group 96", "group_size 96"),
    ("desc_act", "g_idx does not put input channels in groups"),
    ("v1 overflow", "zero point of 2**4 in the v1 'gptq' format"),
    ("float linear", "model.layers.1.mlp.up_proj is not quantized"),
    ("bad scales", "scales is"),
    ("flat qweight", "expected torch.int32 (K * 4 / 32, N) for K inputs and N outputs"),
])
def test_what_the_native_layout_cannot_hold_is_refused(checkpoints, tmp_path, cli, monkeypatch, case, needle):
    monkeypatch.setenv("EDGEAWQ_CACHE", str(tmp_path / "cache"))
    src = checkpoints["llama3"]
    kw = {"3-bit": dict(bits=4, group=32), "group 96": dict(bits=4, group=32),
          "desc_act": dict(bits=4, group=32, g_idx=lambda K, g: torch.randperm(K, generator=torch.Generator()
                                                                               .manual_seed(0)).int() // g),
          "v1 overflow": dict(bits=4, group=32, fmt="gptq", sym=False),
          "float linear": dict(bits=4, group=32, drop="model.layers.1.mlp.up_proj"),
          "bad scales": dict(bits=4, group=32), "flat qweight": dict(bits=4, group=32)}[case]
    folder = write_gptq_folder(src, tmp_path / "g", **kw)
    config = json.loads((folder / "config.json").read_text())
    if case == "3-bit":
        config["quantization_config"]["bits"] = 3
    if case == "group 96":
        config["quantization_config"]["group_size"] = 96
    (folder / "config.json").write_text(json.dumps(config))
    if case in ("bad scales", "v1 overflow", "flat qweight"):
        state = load_file(str(folder / "model.safetensors"))
        name = "model.layers.0.self_attn.q_proj"
        if case == "bad scales":
            state[name + ".scales"] = state[name + ".scales"].float()
        elif case == "flat qweight":
            state[name + ".qweight"] = state[name + ".qweight"].flatten()
        else:                                    # a group whose zero point is 0: v1 stores 0 - 1 as 15
            state[name + ".qzeros"][0, 0] |= 0xF
        save_file(state, str(folder / "model.safetensors"))
    code, _, err = cli(["decode", "--model", str(folder), "--prompt", "hello", "--max_new_tokens", "2"])
    assert code == 2 and needle in err and "Traceback" not in err, err
