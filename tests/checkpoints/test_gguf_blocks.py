"""`--algorithm import`: a Q4_0 GGUF file's blocks become this tool's checkpoint unchanged, bit-exact to llama.cpp's
dequantization (gguf.quants), and run on the engines; other sources, grids and block types are clear errors."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from edgeawq.checkpoints.gguf_format import GGUFTensors, read_config
from edgeawq.kernels.formats import unpack
from edgeawq.kernels.quantizer import dequantize
from edgeawq.runtime.engines import make_engine
from edgeawq.runtime.model_loader import load_model

from .gguf_fixtures import SMOLLM2_GGUF, write_cut_gguf


@pytest.fixture(scope="module")
def q4_0_gguf(tmp_path_factory):
    return write_cut_gguf(tmp_path_factory.mktemp("gguf") / "smollm2-2layers.Q4_0.gguf", layers=2)


@pytest.fixture(scope="module")
def imported(q4_0_gguf, tmp_path_factory):
    from edgeawq.tasks.quantize import quantize_task

    out = tmp_path_factory.mktemp("imported") / "q"
    summary = quantize_task(str(q4_0_gguf), str(out), 4, 32, True, "import", "run", None, None, False, 32, None,
                            128, 512, 0, False, progress=False)
    assert summary["algorithm"] == "gguf-q4_0"
    return out


def test_imported_weights_equal_llama_cpp_dequantization_bit_for_bit(q4_0_gguf, imported):
    source = GGUFTensors(q4_0_gguf, read_config(q4_0_gguf))        # gguf.quants.dequantize, q/k un-permuted
    stored = load_file(str(imported / "model.safetensors"))
    linears = [n for n in source if n.endswith("_proj.weight")]
    assert len(linears) == 2 * 7
    for name in linears:
        base = name.removesuffix(".weight")
        codes = unpack(stored[f"{base}.packed"], "u4k")
        assert stored[f"{base}.scales"].dtype == torch.float16 and bool((stored[f"{base}.zeros"] == 8).all())
        w = dequantize(codes, stored[f"{base}.scales"], stored[f"{base}.zeros"])
        assert torch.equal(w, source.load(name)), name
    for name in ("model.embed_tokens.weight", "model.layers.1.input_layernorm.weight", "model.norm.weight"):
        assert torch.equal(stored[name], source.load(name)), name
    config = json.loads((imported / "config.json").read_text())   # GGUF metadata has none; other tools need it
    assert config["architectures"] == ["LlamaForCausalLM"] and config["num_hidden_layers"] == 2


@pytest.mark.slow
def test_imported_checkpoint_runs_like_the_dequantized_gguf(q4_0_gguf, imported, tmp_path, cli, monkeypatch):
    monkeypatch.setenv("EDGEAWQ_CACHE", str(tmp_path / "cache"))
    ids = torch.tensor([[1, 504, 3458, 314, 260, 3575, 282, 4649, 47]])             # (1, T)
    mask, positions = torch.ones_like(ids), torch.arange(ids.shape[1])[None]
    logits = []
    for path in (q4_0_gguf, imported):
        engine = make_engine(load_model(path, "fp32", "fp32"), True)
        engine.start(1, ids.shape[1])
        logits.append(engine.forward(ids, positions, mask)[0])                    # (T, vocab)
    assert torch.allclose(logits[0], logits[1], rtol=1e-4, atol=1e-4), (logits[0] - logits[1]).abs().max()
    code, out, err = cli(["decode", "--model", str(imported), "--engine", "native", "--prompt", "The capital of",
                          "--max_new_tokens", "4"])
    assert code == 0 and out.startswith("The capital of"), err


def test_import_refuses_what_it_cannot_keep_exactly(q4_0_gguf, tmp_path, cli):
    cases = [
        (["--model", str(SMOLLM2_GGUF), "--group_size", "32"], "blk.0.ffn_down.weight is Q4_1, not Q4_0"),
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
