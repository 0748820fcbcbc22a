"""`--algorithm import`: a Q4_0 or Q4_1 GGUF file's blocks become this tool's checkpoint unchanged, bit-exact to
llama.cpp's dequantization (gguf.quants), and run on every engine (Q4_1's group minimums included); other sources,
grids and block types are clear errors."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from edgeawq.checkpoints.gguf_format import GGUFTensors, read_config
from edgeawq.kernels.formats import unpack
from edgeawq.kernels.quantizer import dequantize
from edgeawq.runtime.backends import EngineOptions, require
from edgeawq.runtime.engines import make_engine
from edgeawq.runtime.model_loader import load_model

from .gguf_fixtures import SMOLLM2_GGUF, write_cut_gguf

IDS = torch.tensor([[1, 504, 3458, 314, 260, 3575, 282, 4649, 47]])             # (1, T)


def _import(gguf_path, out):
    from edgeawq.tasks.quantize import quantize_task

    return quantize_task(str(gguf_path), str(out), 4, 32, True, "import", "run", None, None, False, 32, None,
                         128, 512, 0, False, progress=False)


@pytest.fixture(scope="module", params=["Q4_0", "Q4_1"])
def block_gguf(request, tmp_path_factory):
    return write_cut_gguf(tmp_path_factory.mktemp("gguf") / f"smollm2-2layers.{request.param}.gguf", layers=2,
                          linear_type=request.param)


@pytest.fixture(scope="module")
def imported(block_gguf, tmp_path_factory):
    out = tmp_path_factory.mktemp("imported") / "q"
    assert _import(block_gguf, out)["algorithm"] == "gguf-" + block_gguf.suffixes[0][1:].lower()
    return out


def _logits(path, target: str = "cpu", **options) -> torch.Tensor:
    """fp32 logits (T, vocab) of IDS on `target` (the PyTorch reference engine when options is empty)."""
    loaded = load_model(path, "fp32", "fp32")
    engine = make_engine(loaded, True) if not options else require(target).make_engine(loaded, EngineOptions(**options))
    engine.start(1, IDS.shape[1])
    return engine.forward(IDS, torch.arange(IDS.shape[1])[None], torch.ones_like(IDS))[0].float()


def test_imported_weights_equal_llama_cpp_dequantization_bit_for_bit(block_gguf, imported):
    q4_1 = ".Q4_1." in block_gguf.name
    source = GGUFTensors(block_gguf, read_config(block_gguf))        # gguf.quants.dequantize, q/k un-permuted
    stored = load_file(str(imported / "model.safetensors"))
    linears = [n for n in source if n.endswith("_proj.weight")]
    assert len(linears) == 2 * 7
    for name in linears:
        base = name.removesuffix(".weight")
        codes = unpack(stored[f"{base}.packed"], "u4k")
        assert stored[f"{base}.scales"].dtype == torch.float16
        assert bool((stored[f"{base}.zeros"] == (0 if q4_1 else 8)).all())
        assert (f"{base}.mins" in stored) == q4_1
        mins = stored.get(f"{base}.mins")
        w = dequantize(codes, stored[f"{base}.scales"], stored[f"{base}.zeros"], torch.float32, mins)
        assert torch.equal(w, source.load(name)), name
    for name in ("model.embed_tokens.weight", "model.layers.1.input_layernorm.weight", "model.norm.weight"):
        assert torch.equal(stored[name], source.load(name)), name
    config = json.loads((imported / "config.json").read_text())   # GGUF metadata has none; other tools need it
    assert config["architectures"] == ["LlamaForCausalLM"] and config["num_hidden_layers"] == 2
    assert config["quantization_config"]["group_mins"] == q4_1


@pytest.mark.slow
def test_imported_checkpoint_runs_like_the_dequantized_gguf(block_gguf, imported, tmp_path, cli, monkeypatch):
    monkeypatch.setenv("EDGEAWQ_CACHE", str(tmp_path / "cache"))
    want, got = _logits(block_gguf), _logits(imported)
    assert torch.allclose(want, got, rtol=1e-4, atol=1e-4), (want - got).abs().max()
    code, out, err = cli(["decode", "--model", str(imported), "--engine", "native", "--prompt", "The capital of",
                          "--max_new_tokens", "4"])
    assert code == 0 and out.startswith("The capital of"), err


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.slow
@pytest.mark.parametrize("block_gguf", ["Q4_1"], indirect=True)
def test_q4_1_minimums_reach_every_engine(block_gguf, imported, tmp_path, monkeypatch):
    """Each fast engine on the Q4_1 import stays close to the reference engine, much closer than the same
    checkpoint without its minimums (what an engine that dropped them would compute)."""
    monkeypatch.setenv("EDGEAWQ_CACHE", str(tmp_path / "cache"))
    reference = _logits(imported)
    dropped = load_model(imported, "fp32", "fp32")
    for module in dropped.model.modules():
        if getattr(module, "mins", None) is not None:
            module.mins = torch.zeros_like(module.mins)
    engine = make_engine(dropped, True)
    engine.start(1, IDS.shape[1])
    without = _rel(engine.forward(IDS, torch.arange(IDS.shape[1])[None], torch.ones_like(IDS))[0].float(), reference)
    assert without > 0.05, without
    targets = {"cpu native": ("cpu", {"engine": "native"}), "cpu onnx": ("cpu", {"engine": "onnx"}),
               "npu": ("npu", {"onnx_dir": tmp_path / "npu"}), "tt accuracy": ("tt", {"tt_precision": "accuracy"})}
    for label, (target, options) in targets.items():
        err = _rel(_logits(imported, target, **options), reference)
        print(f"{label}: relative logit error {err:.4f} (without the minimums {without:.4f})")
        assert err < 0.02 and err < 0.2 * without, (label, err, without)


def test_import_refuses_what_it_cannot_keep_exactly(tmp_path_factory, tmp_path, cli):
    q4_0_gguf = write_cut_gguf(tmp_path_factory.mktemp("gguf") / "one-layer.Q4_0.gguf", layers=1)
    q8_0_gguf = write_cut_gguf(tmp_path_factory.mktemp("gguf") / "one-layer.Q8_0.gguf", layers=1, linear_type="Q8_0")
    mixed_gguf = write_cut_gguf(tmp_path_factory.mktemp("gguf") / "two-layers.mixed.gguf", layers=2,
                                linear_type=("Q4_0", "Q4_1"))
    cases = [
        (["--model", str(q8_0_gguf), "--group_size", "32"], "blk.0.ffn_down.weight is Q8_0, not Q4_0 or Q4_1"),
        (["--model", str(mixed_gguf), "--group_size", "32"], "mixes Q4_0 and Q4_1 decoder Linears (model.layers.0."),
        (["--model", str(mixed_gguf), "--group_size", "32"], "is Q4_0, model.layers.1."),
        (["--model", str(q4_0_gguf)], "--group_size 128 asks for another grid"),
        (["--model", str(q4_0_gguf), "--group_size", "32", "--w_bit", "3"], "--w_bit 3"),
        (["--model", str(q4_0_gguf), "--group_size", "32", "--lm_head"], "does not quantize lm_head"),
        (["--model", str(q4_0_gguf), "--group_size", "32", "--export", "awq"], "native format only"),
        (["--group_size", "32"], "is not a GGUF file"),
    ]
    for args, message in cases:
        code, _, err = cli(["quantize", "--algorithm", "import", "--out", str(tmp_path / "q"), *args])
        assert code == 2 and message in err and "Traceback" not in err, (args, err)
        assert not (tmp_path / "q").exists()
