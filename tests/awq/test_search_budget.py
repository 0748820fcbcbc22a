"""The search budget levers: the loss on a subsample of calibration samples, the search in bfloat16, and the
per-layer progress line; each against the full-precision, all-token search it replaces."""
from __future__ import annotations

import pytest
import torch

from edgeawq.awq.calibration import search_sample_indices
from edgeawq.awq.layer_quantizer import AwqOptions, float_forward_recording, quantize_layer
from edgeawq.awq.scale_search import mean_abs, search_scales
from edgeawq.default_models import DEFAULT_MODELS
from edgeawq.errors import UserError
from edgeawq.kernels.quantizer import QuantSpec
from edgeawq.progress import log_projection
from edgeawq.runtime.families import FAMILIES
from edgeawq.runtime.model_loader import load_model
from edgeawq.tasks import quantize as quantize_module


def test_search_samples_are_evenly_spaced_whole_blocks():
    assert search_sample_indices(128, 512, 4096) == [0, 16, 32, 48, 64, 80, 96, 112]
    assert search_sample_indices(128, 512, 4097) == [i * 128 // 9 for i in range(9)]   # rounds up to whole blocks
    assert search_sample_indices(128, 2048, 4096) == [0, 64]
    assert search_sample_indices(128, 512, 0) is None                     # 0: every sample
    assert search_sample_indices(4, 64, 4096) is None                     # the budget covers the calibration set
    with pytest.raises(UserError, match="negative"):
        search_sample_indices(128, 512, -1)


@pytest.fixture(scope="module")
def layer_and_inputs():
    loaded = load_model(DEFAULT_MODELS["default-llama"])
    torch.manual_seed(0)
    x = torch.randn(6, 32, 256)
    x[..., :4] *= 20                                                      # salient channels, as in real models
    pe = loaded.model.model.rotary_emb(x, torch.arange(32)[None])
    return loaded, x, pe


def test_recording_keeps_the_chosen_samples_and_the_statistic_of_all(layer_and_inputs):
    loaded, x, pe = layer_and_inputs
    layer, family = loaded.model.model.layers[0], FAMILIES["llama"]
    out_all, rec_all = float_forward_recording(layer, family, list(x.split(2)), pe)
    out_sub, rec_sub = float_forward_recording(layer, family, list(x.split(2)), pe, keep=[1, 4])
    assert all(torch.equal(a, b) for a, b in zip(out_all, out_sub))    # the forward itself is unchanged
    key = rec_all.key_of["self_attn.q_proj"]
    assert rec_all.key_of == rec_sub.key_of and key == rec_all.key_of["self_attn.v_proj"]
    assert torch.allclose(rec_sub.x_bar[key], mean_abs(rec_all.kept[key]), rtol=1e-5)   # x_bar: every token
    kept = torch.cat(rec_sub.kept[key])
    full = torch.cat(rec_all.kept[key])
    assert kept.shape[0] == 2 and torch.equal(kept, full[[1, 4]])


def test_search_with_a_given_statistic_and_float32_masters():
    torch.manual_seed(1)
    lin = torch.nn.Linear(256, 64, bias=False)
    x = torch.randn(512, 256)
    x[:, :6] *= 30
    spec = QuantSpec(3, 128)
    full = search_scales([x], [lin], lambda c, i: lin(c), spec, ["fc"])
    same = search_scales([x[::4]], [lin], lambda c, i: lin(c), spec, ["fc"], x_bar=mean_abs([x]))
    assert same.alpha == pytest.approx(full.alpha, abs=0.1) and same.loss < same.rtn_loss
    # a bfloat16 copy searched with its float32 master: the weights are restored, the choice stays close
    master = lin.weight.detach().clone()
    copy = torch.nn.Linear(256, 64, bias=False).to(torch.bfloat16)
    copy.weight.data.copy_(master)
    before = copy.weight.detach().clone()
    bf = search_scales([x.bfloat16()], [copy], lambda c, i: copy(c), spec, ["fc"], x_bar=mean_abs([x]),
                       masters=[master])
    assert torch.equal(copy.weight, before)
    assert bf.alpha == pytest.approx(full.alpha, abs=0.1) and bf.loss < bf.rtn_loss


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_layer_quantized_through_a_subsample_and_bfloat16_stays_close(layer_and_inputs, dtype):
    import copy

    loaded, x, pe = layer_and_inputs
    family = FAMILIES["llama"]
    spec = QuantSpec(3, 128)

    def run(options):
        layer = copy.deepcopy(loaded.model.model.layers[0])
        inputs = [c.to(options.dtype) for c in x.split(2)]
        pe_d = tuple(p.to(options.dtype) for p in pe)
        out, res = quantize_layer(layer, family, "model.layers.0.", options, inputs, pe_d)
        return layer, out, res

    ref_layer, ref_out, ref = run(AwqOptions(spec))
    layer, out, res = run(AwqOptions(spec, search_samples=[0, 3], dtype=dtype))
    assert all(o.dtype == dtype for o in out)                                 # the next layer's input dtype
    assert all(torch.allclose(a.float(), b, atol=0.05, rtol=0.02) for a, b in zip(out, ref_out))
    assert all(p.dtype == torch.float32 for p in layer.parameters())          # the master stays float32
    assert [g["group"] for g in res.report] == [g["group"] for g in ref.report]
    # the quantized layer's error on the calibration inputs stays within 10% of the full search's (2 of 6
    # samples of 32 tokens is a far smaller share than the default 8 of 128 samples of 512 tokens)
    def error(lay, r):
        for name, q in r.quantized.items():
            lay.get_submodule(name).weight.data.copy_(q.dequantize())
        return sum(float((lay(c, position_embeddings=pe) - o).pow(2).mean()) for c, o in zip(x.split(2), ref_out))
    assert error(layer, res) <= 1.10 * error(ref_layer, ref)


def test_auto_dtype_follows_the_cpu(monkeypatch):
    from edgeawq.cpu_backend import native_build

    monkeypatch.setattr(native_build, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16"})
    assert quantize_module.resolve_search_dtype("auto") == torch.bfloat16
    monkeypatch.setattr(native_build, "cpu_flags", lambda: {"avx2", "fma"})
    assert quantize_module.resolve_search_dtype("auto") == torch.float32
    assert quantize_module.resolve_search_dtype("bf16") == torch.bfloat16
    with pytest.raises(UserError, match="search_dtype"):
        quantize_module.resolve_search_dtype("fp8")


def test_progress_line_projects_the_total(capsys, monkeypatch):
    monkeypatch.delenv("EDGEAWQ_QUIET", raising=False)
    log_projection([100.0, 120.0], 32, 250.0)
    err = capsys.readouterr().err
    # elapsed 250 s + mean 110 s x 30 layers left = 3550 s
    assert err.strip() == "layer 2/32 done in 120.0 s; elapsed 0.07 h, projected total 0.99 h"
    monkeypatch.setenv("EDGEAWQ_QUIET", "1")
    log_projection([100.0], 32, 100.0)
    assert capsys.readouterr().err == ""


def test_searching_the_layer_itself_equals_searching_a_copy(layer_and_inputs, monkeypatch):
    """fp32 searches the master layer in place (no copy); candidates must still come from unchanged weights."""
    import copy

    from edgeawq.awq import layer_quantizer

    loaded, x, pe = layer_and_inputs
    spec = QuantSpec(3, 128)

    def run():
        layer = copy.deepcopy(loaded.model.model.layers[0])
        _, res = quantize_layer(layer, FAMILIES["llama"], "model.layers.0.", AwqOptions(spec), list(x.split(2)), pe)
        return res

    in_place = run()
    monkeypatch.setattr(layer_quantizer, "search_copy", lambda layer, dtype: copy.deepcopy(layer))
    copied = run()
    assert [g["alpha"] for g in in_place.report] == [g["alpha"] for g in copied.report]
    assert all(torch.equal(in_place.quantized[n].codes, copied.quantized[n].codes) for n in in_place.quantized)


def test_checkpoint_records_the_search_settings_and_layer_times(checkpoints, tmp_path, cli):
    from ..conftest import quantize_tiny
    import json

    summary = quantize_tiny(checkpoints["llama3"], tmp_path / "q", search_tokens=64, search_dtype="fp32")
    awq = json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]["awq"]
    assert awq["search_tokens"] == 64 and awq["search_dtype"] == "float32"
    assert len(summary["layer_seconds"]) == 2 and all(t > 0 for t in summary["layer_seconds"])
    code, _, err = cli(["quantize", "--model", str(checkpoints["llama3"]), "--out", str(tmp_path / "r"),
                        "--search_tokens", "-1"])
    assert code == 2 and "--search_tokens" in err
