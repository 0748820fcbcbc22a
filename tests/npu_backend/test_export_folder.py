"""Export folders: written from scratch, reused only when current, stale and foreign folders refused, and
runnable by onnxruntime-genai itself."""
from __future__ import annotations

import json

import numpy as np
import pytest

from edgeawq.errors import UserError
from edgeawq.npu_backend.backend import ensure_export
from edgeawq.runtime.model_identity import source_fingerprint
from edgeawq.npu_backend.export_folder import RECORD, export_model, read_record
from edgeawq.runtime.model_loader import load_model

from ..conftest import quantize_tiny


@pytest.fixture(scope="module")
def quantized(checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("npu") / "q"
    quantize_tiny(checkpoints["llama3"], out, awq_mode="none", algorithm="pergrp")
    return out


def test_export_twice_replaces_everything(quantized, tmp_path):
    loaded = load_model(quantized, "fp32", "fp32")
    out = tmp_path / "onnx"
    export_model(loaded, out, 4, source_fingerprint(quantized))
    (out / "leftover.bin").write_bytes(b"stale")
    record = export_model(loaded, out, 0, source_fingerprint(quantized))
    assert not (out / "leftover.bin").exists()
    assert sorted(p.name for p in out.iterdir()) == sorted([*record["files"], RECORD])
    assert json.loads((out / RECORD).read_text())["accuracy_level"] == 0
    genai = json.loads((out / "genai_config.json").read_text())
    assert genai["model"]["decoder"]["inputs"]["position_ids"] == "position_ids"
    assert genai["search"]["past_present_share_buffer"] is True         # GroupQueryAttention writes in place
    assert genai["model"]["decoder"]["filename"] == "model.genai.onnx"


def test_cache_is_reused_while_current_and_stale_folders_are_refused_and_damage_rebuilt(quantized, tmp_path,
                                                                                        monkeypatch, capsys):
    monkeypatch.setenv("EDGEAWQ_CACHE", str(tmp_path / "cache"))
    folder = ensure_export(load_model(quantized, "fp32", "fp32"), None, 4)
    stamp = (folder / "model.onnx").stat().st_mtime_ns
    assert ensure_export(load_model(quantized, "fp32", "fp32"), None, 4) == folder
    assert (folder / "model.onnx").stat().st_mtime_ns == stamp            # reused, not re-exported
    with pytest.raises(UserError, match="stale.*accuracy_level 4, not the requested 0"):
        ensure_export(load_model(quantized, "fp32", "fp32"), folder, 0)
    with pytest.raises(UserError, match="stale.*not from the checkpoint as it is now"):
        read_record(folder, "another-fingerprint", 4)
    data = folder / "model.onnx.data"
    good = data.read_bytes()
    damaged = bytearray(good)
    damaged[len(good) // 2] ^= 0xFF                                        # same size, one byte of weights changed
    data.write_bytes(bytes(damaged))
    with pytest.raises(UserError, match="damaged: the contents of model.onnx.data changed"):
        read_record(folder, None, None)
    data.write_bytes(b"truncated")
    with pytest.raises(UserError, match="damaged: model.onnx.data has 9 bytes"):
        read_record(folder, None, None)
    assert ensure_export(load_model(quantized, "fp32", "fp32"), None, 4) == folder      # rebuilt, saying so
    assert data.read_bytes() == good and "Exporting it again" in capsys.readouterr().err


def test_foreign_folder_is_refused(quantized, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "genai_config.json").write_text("{}")
    with pytest.raises(UserError, match="not an export of this tool"):
        ensure_export(load_model(quantized, "fp32", "fp32"), foreign, 4)


def test_empty_folder_is_exported_into(quantized, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (ensure_export(load_model(quantized, "fp32", "fp32"), empty, 4) / RECORD).exists()


def test_onnxruntime_genai_runs_the_folder_with_our_greedy_tokens(quantized, tmp_path):
    og = pytest.importorskip("onnxruntime_genai")
    from edgeawq.npu_backend.engine import OrtEngine
    from edgeawq.runtime.generate import generate_ids

    loaded = load_model(quantized, "fp32", "fp32")
    out = tmp_path / "onnx"
    export_model(loaded, out, 4, source_fingerprint(quantized))
    prompt = [0, 569, 738, 5, 9]
    ours = generate_ids(OrtEngine(out, "CPU"), [prompt], 12, 64, 2, set(), stop_at_eos=False)[0].token_ids
    model = og.Model(str(out))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + 12, do_sample=False)
    gen = og.Generator(model, params)
    gen.append_tokens(np.array([prompt], dtype=np.int32))
    theirs = []
    while not gen.is_done():
        gen.generate_next_token()
        theirs.append(int(gen.get_next_tokens()[0]))
    assert theirs == ours
