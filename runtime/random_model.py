"""Random-weight quantized models of real shapes, built in memory for speed measurements (`--random_weights`).

`--model` then names a shipped shape (configs/shapes/<name>.json: llama-2-7b, yarn-llama-2-7b-64k (the
Llama-2-7B layout with yarn RoPE scaling x16: a 64k context), llama-3.1-8b, llama-3.2-1b, qwen2.5-7b,
smollm2-135m) or a config.json path. The skeleton is built on the meta device; each decoder-layer Linear gets a
N(0, 0.02) float weight that is RTN-quantized at once and dropped, so the float model is never materialised: peak
memory is the quantized layers, the float embedding / head in `dtype`, and one float Linear. Norm weights are 1,
biases N(0, 0.02). The embedded default model's tokenizer is attached (its ids fit every shipped vocabulary). Speed
does not depend on the values; these models generate noise.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .. import default_models
from ..checkpoints.tokenizer_files import load_tokenizer
from ..data_sources import SHAPES_DIR
from ..checkpoints.hf_files import read_json
from ..errors import UserError
from ..kernels.qlinear import QLinearPerGrp
from ..kernels.quantizer import QuantizedWeight, QuantSpec, quantize
from .families import FAMILIES, supported_types
from .memory import release_free_memory
from .config_check import check_config
from .model_loader import LoadedModel, build_skeleton, config_from_dict
from .module_paths import get_module, set_module
from .quantized_model import QuantLayout, install_qlinears



def shape_names() -> list[str]:
    return sorted(p.stem for p in SHAPES_DIR.glob("*.json"))


def read_shape(name: str) -> dict:
    """The config dict of a shipped shape name or of a config.json path (or its folder)."""
    path = SHAPES_DIR / f"{name}.json" if (SHAPES_DIR / f"{name}.json").exists() else Path(name).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise UserError(f"--random_weights needs a shape name or a config.json path; {name!r} is neither.",
                        f"Use one of: {', '.join(shape_names())}, or the path of a config.json.")
    raw = read_json(path, "Model config")                    # the same checks as every other config.json
    if not isinstance(raw.get("model_type"), str) or raw["model_type"] not in FAMILIES:
        raise UserError(f"{path} has model_type {raw.get('model_type')!r}.", f"Supported: {supported_types()}.")
    check_config(raw, path)
    raw.pop("quantization_config", None)
    return raw


def meta_skeleton(raw: dict, source: Path | str = "the shape config"):
    """-> (transformers config, family row, the CausalLM on the meta device) for a checked config dict."""
    family = FAMILIES[raw["model_type"]]
    config = config_from_dict(raw, Path(str(source)))
    config._attn_implementation = "sdpa"
    return config, family, build_skeleton(config, family, Path(str(source)))


def _identity(name: str, spec: QuantSpec, dtype: torch.dtype, seed: int, lm_head_group_size: int | None) -> str:
    return f"random:{name}:{spec}:{dtype}:{seed}:lm_head={lm_head_group_size}"


def random_model_shell(name: str, spec: QuantSpec, dtype: torch.dtype, act_dtype: torch.dtype, seed: int = 0,
                       lm_head_group_size: int | None = None) -> LoadedModel:
    """The same model as `random_quantized_model` with every tensor on the meta device (no memory, no time):
    enough for its config, tokenizer, weight byte counts and identity, e.g. to run an export that exists."""
    config, family, model = meta_skeleton(read_shape(name))
    layout = QuantLayout(spec, family.linears, lm_head_group_size)
    install_qlinears(model, family, layout, act_dtype)
    for name_p, p in list(model.named_parameters()):
        if p.is_floating_point():
            set_module(model, name_p, torch.nn.Parameter(torch.empty(p.shape, dtype=dtype, device="meta"),
                                                         requires_grad=False))
    if config.tie_word_embeddings and lm_head_group_size is None:
        get_module(model, family.lm_head).weight = get_module(model, family.embed).weight
    tokenizer = load_tokenizer(default_models.DEFAULT_MODELS[default_models.DEFAULT])
    return LoadedModel(model, config, family, tokenizer, Path(f"random:{name}"), dtype, layout,
                       _identity(name, spec, dtype, seed, lm_head_group_size))


@torch.no_grad()
def random_quantized_model(name: str, spec: QuantSpec, dtype: torch.dtype, act_dtype: torch.dtype,
                           seed: int = 0, lm_head_group_size: int | None = None) -> LoadedModel:
    """`lm_head_group_size`: also RTN-quantize lm_head with that group size (None: it stays float)."""
    config, family, model = meta_skeleton(read_shape(name))
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen) * 0.02

    layers = get_module(model, family.layers)
    for i in range(len(layers)):
        for rel in family.linears:
            name_i = f"{family.layers}.{i}.{rel}"
            lin = get_module(model, name_i)
            qw = quantize(rand(lin.out_features, lin.in_features), spec, name_i)
            bias = rand(lin.out_features) if lin.bias is not None else None
            set_module(model, name_i, QLinearPerGrp.from_quantized(qw, bias, act_dtype))
        release_free_memory()
    for name_p, p in list(model.named_parameters()):
        value = torch.ones(p.shape, dtype=dtype)
        if not name_p.endswith("norm.weight"):
            for rows in value.split(4096):  # fill in blocks: no full-size fp32 temporary of the embedding
                rows.copy_(rand(*rows.shape))
        set_module(model, name_p, torch.nn.Parameter(value, requires_grad=False))
    if config.tie_word_embeddings:
        get_module(model, family.lm_head).weight = get_module(model, family.embed).weight
    if lm_head_group_size is not None:
        head = get_module(model, family.lm_head)
        head_spec = QuantSpec(spec.bits, lm_head_group_size, spec.zero_point)
        parts = [quantize(rows.float(), head_spec, family.lm_head) for rows in head.weight.split(8192)]
        qw = QuantizedWeight(torch.cat([p.codes for p in parts]), torch.cat([p.scales for p in parts]),
                             torch.cat([p.zeros for p in parts]), head_spec)   # rows quantize independently
        set_module(model, family.lm_head, QLinearPerGrp.from_quantized(qw, None, act_dtype))
    rotary = get_module(model, family.rotary)
    set_module(model, family.rotary, type(rotary)(config=config))
    model.eval()
    tokenizer = load_tokenizer(default_models.DEFAULT_MODELS[default_models.DEFAULT])
    layout = QuantLayout(spec, family.linears, lm_head_group_size)
    return LoadedModel(model, config, family, tokenizer, Path(f"random:{name}"), dtype, layout,
                       _identity(name, spec, dtype, seed, lm_head_group_size))

