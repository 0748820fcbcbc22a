"""The onnxruntime-genai peer: the same random quantized model as ours (same seed, same RTN codes), written as an
AutoAWQ GEMM checkpoint and converted by the onnxruntime-genai model builder with the options of docs/onnx_runtime.md and benchmarks/cpu_vs_peers.py
(`-p int4 -e cpu --extra_options block_size=128 accuracy_level=4`), then `intra_op_num_threads` set in
genai_config.json (without it the session runs about half as fast on this machine). The builder quantizes the
float lm_head itself (RTN int4).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from edgeawq.checkpoints.autoawq import autoawq_quantization_config, autoawq_tensors
from edgeawq.default_models import DEFAULT, DEFAULT_MODELS
from edgeawq.kernels.formats import native_format, unpack
from edgeawq.kernels.qlinear import QLinearPerGrp
from edgeawq.kernels.quantizer import QuantizedWeight, QuantSpec
from edgeawq.runtime.random_model import random_quantized_model, read_shape


def write_random_autoawq(shape: str, out: Path, group_size: int = 128, seed: int = 0) -> Path:
    loaded = random_quantized_model(shape, QuantSpec(4, group_size), torch.bfloat16, torch.bfloat16, seed=seed)
    tensors = {}
    for name, module in loaded.model.named_modules():
        if isinstance(module, QLinearPerGrp):
            qw = QuantizedWeight(unpack(module.packed, native_format(4)), module.scales, module.zeros, module.spec)
            tensors.update(autoawq_tensors(name, qw, module.bias))
    quantized = {n.rsplit(".", 1)[0] for n in tensors}
    for name, p in loaded.model.named_parameters(remove_duplicate=True):
        if name.rsplit(".", 1)[0] not in quantized:
            tensors[name] = p.detach().to(torch.float16).contiguous()
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    config = dict(read_shape(shape), torch_dtype="float16",
                  quantization_config=autoawq_quantization_config(group_size))
    (out / "config.json").write_text(json.dumps(config, indent=2))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(DEFAULT_MODELS[DEFAULT] / f, out / f)
    return out


def build_genai_model(awq_dir: Path, out: Path, threads: int, block_size: int = 128) -> Path:
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(awq_dir), "-o", str(out), "-p", "int4",
           "-e", "cpu", "--extra_options", f"block_size={block_size}", "accuracy_level=4"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, "HF_HUB_OFFLINE": "1"})
    cfg_path = out / "genai_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["model"]["decoder"]["session_options"]["intra_op_num_threads"] = threads
    cfg_path.write_text(json.dumps(cfg, indent=2))
    return out
