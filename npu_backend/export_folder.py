"""The exported ONNX Runtime model folder, its record, and the export cache.

Folder (an onnxruntime-genai model folder; `og.Model(folder)` runs it):
  model.onnx, model.onnx.data   the decoder graph (graph_builder.py) and its weights (64 KiB-aligned)
  model.genai.onnx              the same graph and data without the num_logits_to_keep input (for genai)
  genai_config.json             onnxruntime-genai configuration (inputs incl. position_ids, shared KV buffer)
  tokenizer files               copied from the checkpoint
  edgeawq_export.json           the record: {"format": "edgeawq-onnx", "format_version", "source",
                                "source_fingerprint", "bits", "group_size", "lm_head_group_size",
                                "container_bits", "accuracy_level", "matmulnbits_nodes", "quantized_linears",
                                "float_matmuls", "onnxruntime", "files": {name: size},
                                "hashes": {name: {"size", "xxh3_64"}}}
A folder is written atomically (checkpoints/directory.py) and always from scratch: exporting twice reuses
nothing. A folder is used only when its record matches the source checkpoint's fingerprint, this format version
and the requested accuracy level; otherwise it is stale (or foreign, without a record) and refused by name. Its files
are checked against the recorded sizes and hashes before every use; a damaged export is written again.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from ..checkpoints.cache_integrity import DamagedArtefact, damage, file_table
from ..checkpoints.directory import atomic_directory
from ..checkpoints.output_path import unlisted_files_problem
from ..errors import UserError
from ..runtime.fusion import head_dim
from ..runtime.model_identity import cache_root
from ..runtime.model_loader import LoadedModel
from .graph_builder import DecoderGraphBuilder
from .onnx_writer import GraphWriter

RECORD = "edgeawq_export.json"
GENAI_MODEL = "model.genai.onnx"     # the same graph without the num_logits_to_keep input, for onnxruntime-genai
FORMAT = "edgeawq-onnx"
FORMAT_VERSION = 4                     # 4: RoPE tables to the context limit (runtime/rope_extension.py)
ACCURACY_LEVELS = (0, 1, 2, 3, 4)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "chat_template.jinja", "generation_config.json")


def cache_folder(fingerprint: str, accuracy_level: int) -> Path:
    key = hashlib.sha256(f"{FORMAT}:{FORMAT_VERSION}:{fingerprint}:{accuracy_level}".encode()).hexdigest()[:20]
    return cache_root() / "onnx" / key


def genai_config(loaded: LoadedModel, max_length: int) -> dict:
    c, tok = loaded.config, loaded.tokenizer
    eos = getattr(c, "eos_token_id", None)
    eos = eos if eos is not None else tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else (eos[0] if isinstance(eos, list) else eos)
    decoder = {"session_options": {"log_id": "onnxruntime-genai", "provider_options": [],
                                   "intra_op_num_threads": os.cpu_count() or 1},
               "filename": GENAI_MODEL, "head_size": head_dim(c), "hidden_size": c.hidden_size,
               "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                          "position_ids": "position_ids", "past_key_names": "past_key_values.%d.key",
                          "past_value_names": "past_key_values.%d.value"},
               "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                           "present_value_names": "present.%d.value"},
               "num_attention_heads": c.num_attention_heads, "num_hidden_layers": c.num_hidden_layers,
               "num_key_value_heads": c.num_key_value_heads}
    return {"model": {"bos_token_id": tok.bos_token_id if tok.bos_token_id is not None else eos,
                      "context_length": loaded.max_context, "decoder": decoder, "eos_token_id": eos,
                      "pad_token_id": pad, "type": loaded.family.model_type, "vocab_size": c.vocab_size},
            "search": {"do_sample": False, "max_length": max_length, "min_length": 0, "num_beams": 1,
                       "num_return_sequences": 1, "past_present_share_buffer": True, "repetition_penalty": 1.0,
                       "temperature": 1.0, "top_k": 1, "top_p": 1.0}}


def export_model(loaded: LoadedModel, out: Path, accuracy_level: int, fingerprint: str, wait: bool = False) -> dict:
    """Write the model folder for `loaded` into `out` (atomically, from scratch). Returns the record. `wait`: wait
    for another run writing the same folder (caches) instead of refusing."""
    if accuracy_level not in ACCURACY_LEVELS:
        raise UserError(f"--accuracy_level {accuracy_level} is invalid.",
                        "Use 0 (unset), 1 (fp32), 2 (fp16), 3 (bf16) or 4 (int8 activations, the fast CPU path).")
    import onnxruntime

    out = Path(out)
    with atomic_directory(out, wait=wait) as tmp:
        writer = GraphWriter(tmp)
        summary = DecoderGraphBuilder(loaded, writer, accuracy_level).build()
        writer.save()                                                  # num_logits_to_keep is an input
        writer.save(GENAI_MODEL, fixed_inputs={"num_logits_to_keep": np.array([0], np.int64)})
        (tmp / "genai_config.json").write_text(json.dumps(genai_config(loaded, loaded.max_context), indent=2))
        for name in TOKENIZER_FILES:
            if (loaded.source / name).is_file():
                shutil.copyfile(loaded.source / name, tmp / name)
        q = loaded.quant
        record = {"format": FORMAT, "format_version": FORMAT_VERSION, "source": str(loaded.source),
                  "source_fingerprint": fingerprint,
                  "bits": q.spec.bits if q else None, "group_size": q.spec.group_size if q else None,
                  "lm_head_group_size": q.lm_head_group_size if q else None,
                  "act_quant": q.act_quant if q else None,
                  "container_bits": (4 if q.spec.bits <= 4 else 8) if q else None,
                  "accuracy_level": accuracy_level, "matmulnbits_nodes": summary.matmulnbits,
                  "matmulinteger_nodes": summary.matmulintegers,
                  "quantized_linears": summary.quantized_linears, "float_matmuls": summary.float_matmuls,
                  "op_counts": summary.op_counts, "onnxruntime": onnxruntime.__version__,
                  "files": {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}}
        record["hashes"] = file_table(tmp, record["files"])
        (tmp / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return record


def export_problem(folder: Path) -> str | None:
    """None when `folder` holds an earlier export of this tool and nothing else (an export may replace it); else
    why it is not one."""
    try:
        record = json.loads((folder / RECORD).read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return f"it has no readable {RECORD}"
    if not isinstance(record, dict) or record.get("format") != FORMAT or not isinstance(record.get("files"), dict):
        return f"its {RECORD} is not an {FORMAT} record"
    return unlisted_files_problem(folder, record["files"], RECORD)


def read_record(folder: Path, fingerprint: str | None, accuracy_level: int | None) -> dict:
    """The record of an existing export folder, after checking it is ours, current and complete."""
    path = folder / RECORD
    if not path.exists():
        raise UserError(f"{folder} is not an export of this tool (it has no {RECORD}); it may come from another "
                        "exporter or be incomplete.",
                        "Pass an empty or new folder to --onnx_dir, or remove this one; the tool exports there.")
    try:
        record = json.loads(path.read_text())
        ok = record.get("format") == FORMAT
    except (OSError, json.JSONDecodeError):
        ok = False
    if not ok:
        raise UserError(f"{path} is unreadable or not an {FORMAT} record.", f"Remove {folder} and export again.")
    problems = []
    if record.get("format_version") != FORMAT_VERSION:
        problems.append(f"its format version is {record.get('format_version')}, this tool writes {FORMAT_VERSION}")
    if fingerprint is not None and record.get("source_fingerprint") != fingerprint:
        problems.append(f"it was exported from {record.get('source')} as it was then, not from the checkpoint "
                        "as it is now")
    if accuracy_level is not None and record.get("accuracy_level") != accuracy_level:
        problems.append(f"it has accuracy_level {record.get('accuracy_level')}, not the requested {accuracy_level}")
    if problems:
        raise UserError(f"The export folder {folder} is stale: {'; '.join(problems)}.",
                        "Export again with `run_awq export --model CHECKPOINT --out "
                        f"{folder}` (it replaces the folder), or remove it.")
    problem = damage(folder, record.get("hashes"))
    if problem:
        raise DamagedArtefact(f"The export folder {folder} is damaged: {problem}.",
                              "Export it again (run_awq rebuilds a damaged export it finds by itself).")
    return record
