"""ONNX Runtime execution providers: the preference list, what is available, and strict mode.

`--ep` takes a comma-separated preference list of short or full provider names; the session gets every available
provider of the list in that order (ONNX Runtime assigns each node to the first provider that supports it).
Default: VitisAI (AMD Ryzen AI), QNN (Qualcomm), OpenVINO (Intel), DML (DirectML), then CPU.
Strict mode (`--strict_ep`): the first requested non-CPU provider must be available and the session is created
with `session.disable_cpu_ep_fallback=1`, so a node it cannot run is an error instead of a silent CPU fallback.
Only an explicit `--ep CPU` runs on the CPU provider in strict mode.
"""
from __future__ import annotations

import os

from ..errors import UserError

SHORT_NAMES = {"vitisai": "VitisAIExecutionProvider", "qnn": "QNNExecutionProvider",
               "openvino": "OpenVINOExecutionProvider", "dml": "DmlExecutionProvider",
               "cuda": "CUDAExecutionProvider", "coreml": "CoreMLExecutionProvider", "cpu": "CPUExecutionProvider"}
DEFAULT_PREFERENCE = "VitisAI,QNN,OpenVINO,DML,CPU"
CPU = "CPUExecutionProvider"


def ort_module():
    try:
        import onnxruntime
    except ImportError:
        raise UserError("The npu target needs ONNX Runtime, which is not installed.",
                        "Install it with `pip install onnxruntime` (or your NPU vendor's build, e.g. "
                        "onnxruntime-vitisai for Ryzen AI) in this environment.") from None
    return onnxruntime


def full_name(name: str) -> str:
    key = name.strip()
    return SHORT_NAMES.get(key.lower().removesuffix("executionprovider"), key)


def choose_providers(preference: str | None, strict: bool, available: list[str] | None = None) -> list[str]:
    """-> the session's provider list (available ones, in preference order)."""
    available = list(ort_module().get_available_providers()) if available is None else available
    wanted = [full_name(p) for p in (preference or DEFAULT_PREFERENCE).split(",") if p.strip()]
    if not wanted:
        raise UserError(f"--ep {preference!r} names no execution provider.",
                        f"Give a comma-separated list, e.g. --ep {DEFAULT_PREFERENCE}.")
    chosen = [p for p in wanted if p in available]
    shown = ", ".join(available)
    if not chosen:
        raise UserError(f"None of the requested execution providers ({', '.join(wanted)}) is available in this "
                        f"ONNX Runtime build; available: {shown}.",
                        "Add one of the available providers to --ep (CPU always works), or install the ONNX "
                        "Runtime build of your NPU vendor.")
    if strict:
        accelerators = [p for p in wanted if p != CPU]
        if accelerators and chosen[0] != accelerators[0]:
            raise UserError(f"--strict_ep: the requested provider {accelerators[0]} is not available (available: "
                            f"{shown}), and strict mode forbids falling back to the CPU.",
                            "Run on a machine with that NPU and its ONNX Runtime build, drop --strict_ep, or pass "
                            "--ep CPU explicitly.")
        if accelerators:
            chosen = [p for p in chosen if p != CPU]
    return chosen


def session_options(strict: bool, threads: int, providers: list[str]):
    ort = ort_module()
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3          # errors only: ORT's warnings are not the user's to act on
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning workers pick up the next node without a wake-up: about 5% faster decode here (measured). PyTorch
    # only samples between runs in this process; EDGEAWQ_ORT_SPIN=0 turns spinning off when it shares the cores.
    so.add_session_config_entry("session.intra_op.allow_spinning", os.environ.get("EDGEAWQ_ORT_SPIN", "1"))
    if strict and providers != [CPU]:
        so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    return so
