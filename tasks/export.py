"""`run_awq export --model CKPT --out DIR`: write the ONNX Runtime model folder of a checkpoint.

The folder is an onnxruntime-genai model folder (npu_backend/export_folder.py); it is written from scratch and
atomically, so exporting twice reuses nothing. `--target npu` then runs it with `--onnx_dir DIR`.
"""
from __future__ import annotations

import json

from .. import default_models
from ..checkpoints.output_path import check_output_folder
from ..errors import UserError
from ..runtime.backends import require
from ..runtime.model_loader import load_model

EXPORT_TARGETS = ("npu",)


def export_task(model_path: str | None, target: str, out: str | None, accuracy_level: int, fmt: str,
                overwrite: bool = False) -> dict:
    """Export the checkpoint at `model_path` into the folder `out` (replacing only an earlier export of this tool
    there, or anything but protected places with `overwrite`: checkpoints/output_path.py)."""
    if target not in EXPORT_TARGETS:
        raise UserError(f"run_awq export writes ONNX Runtime folders for {', '.join(EXPORT_TARGETS)}; --target "
                        f"{target} has no export.", "Pass --target npu.")
    if out is None:
        raise UserError("run_awq export needs --out.", "Pass --out FOLDER for the exported model.")
    require(target)
    from ..npu_backend.export_folder import export_model, export_problem
    from ..runtime.model_identity import fingerprint_of

    out_path = check_output_folder(out, "export", [default_models.resolve(model_path)], overwrite, export_problem)
    loaded = load_model(model_path, "fp32", "fp32")
    record = export_model(loaded, out_path, accuracy_level, fingerprint_of(loaded))
    if fmt in ("json", "jsonl"):
        print(json.dumps(record, indent=2 if fmt == "json" else None))
    else:
        q = (f"w{record['bits']} g{record['group_size']} (container {record['container_bits']}-bit)"
             if record["bits"] else "float")
        print(f"exported {loaded.source} -> {out}: {q}, accuracy_level {accuracy_level}, "
              f"{record['matmulnbits_nodes']} MatMulNBits nodes covering {record['quantized_linears']} quantized "
              f"Linears, {record['float_matmuls']} float MatMul; run it with --target npu --onnx_dir {out} or "
              "onnxruntime-genai")
    return record
