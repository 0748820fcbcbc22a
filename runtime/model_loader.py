"""Build a transformers CausalLM for a local checkpoint on the meta device and fill it from mapped weights.

`load_model(path)` accepts a Hugging Face folder (config.json + safetensors / pytorch_model.bin, single or
sharded) or a Meta-format folder (params.json + consolidated.*.pth + tokenizer.model, converted on load).
The module tree is built on the meta device and the memory-mapped tensors are assigned to it
(`load_state_dict(assign=True)`), so no randomly initialised copy is ever made and peak RSS is about one
copy of the weights (two when `dtype` differs from the file's dtype only for the tensors being converted).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from torch import nn

from .. import default_models
from ..checkpoints import hf_files, meta_format
from ..checkpoints.tokenizer_files import load_tokenizer, meta_eos_ids
from ..errors import UserError
from .families import FAMILIES, Family, supported_types

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
_IGNORED_KEYS = ("rotary_emb.inv_freq",)  # stale buffers in some older checkpoints


@dataclass
class LoadedModel:
    model: nn.Module          # the transformers CausalLM (modules possibly swapped by fuse_model)
    config: object            # its transformers config
    family: Family
    tokenizer: object
    source: Path
    dtype: torch.dtype

    @property
    def max_context(self) -> int:
        return int(getattr(self.config, "max_position_embeddings", 2048))


def get_module(root: nn.Module, dotted: str) -> nn.Module:
    for part in dotted.split("."):
        root = getattr(root, part)
    return root


def set_module(root: nn.Module, dotted: str, module: nn.Module) -> None:
    parent, _, name = dotted.rpartition(".")
    setattr(get_module(root, parent) if parent else root, name, module)


def _check_folder(path: Path) -> None:
    if not path.exists():
        raise UserError(f"Model path {path} does not exist.",
                        "Pass --model with a local checkpoint folder, or omit --model to use the embedded default "
                        f"model ({', '.join(default_models.DEFAULT_MODELS)}).")
    if not path.is_dir():
        raise UserError(f"Model path {path} is a file, not a folder.",
                        "Pass the folder that holds config.json and the weight files.")


def read_config(path: Path) -> tuple[object, Family]:
    """The transformers config of a Hugging Face folder and its family row (unsupported types are refused)."""
    raw = hf_files.read_json(path / "config.json", "Model config")
    model_type = raw.get("model_type")
    if model_type not in FAMILIES:
        raise UserError(f"{path / 'config.json'} has model_type {model_type!r}, which this tool does not support.",
                        f"Supported model types: {supported_types()}.")
    return transformers.AutoConfig.for_model(**raw), FAMILIES[model_type]


def load_model(path: str | Path | None = None, dtype: str = "fp32") -> LoadedModel:
    """Load a local checkpoint (None or an alias selects an embedded default model) for inference."""
    if dtype not in DTYPES:
        raise UserError(f"Unknown dtype {dtype!r}.", f"Use one of: {', '.join(DTYPES)}.")
    folder = default_models.resolve(None if path is None else str(path))
    _check_folder(folder)
    is_meta = meta_format.is_meta_folder(folder)
    if is_meta:
        tokenizer = load_tokenizer(folder, meta_format=True)
        raw, state = meta_format.convert(folder, tokenizer.bos_token_id, meta_eos_ids(tokenizer))
        config, family = transformers.AutoConfig.for_model(**raw), FAMILIES["llama"]
    else:
        if not (folder / "config.json").exists():
            raise UserError(f"{folder} is not a model folder: it has no config.json (Hugging Face format) and no "
                            "params.json + consolidated.*.pth (Meta format).",
                            "Point --model at the folder that holds the checkpoint's config and weight files.")
        config, family = read_config(folder)
        files = hf_files.weight_files(folder)
        if not files:
            raise UserError(f"{folder} has a config.json but no weights (model.safetensors, "
                            "model.safetensors.index.json or pytorch_model.bin).",
                            "Copy the weight files of the checkpoint into that folder.")
        state = hf_files.load_tensors(files)
        tokenizer = load_tokenizer(folder)
    model = build_from_state_dict(config, family, state, DTYPES[dtype], folder)
    return LoadedModel(model, config, family, tokenizer, folder, DTYPES[dtype])


def build_from_state_dict(config, family: Family, state: dict[str, torch.Tensor], dtype: torch.dtype,
                          source: Path) -> nn.Module:
    """Instantiate `family.model_class` on the meta device and assign `state` (cast to `dtype`) to it."""
    config._attn_implementation = "sdpa"
    cls = getattr(transformers, family.model_class)
    with torch.device("meta"):
        model = cls(config)
    state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()
             if not k.endswith(_IGNORED_KEYS)}
    try:
        result = model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as exc:
        raise UserError(f"The weights in {source} do not fit its config ({str(exc).splitlines()[-1].strip()}).",
                        "Use the config.json that was released with these weights.") from None
    missing = [k for k in result.missing_keys if not (k == f"{family.lm_head}.weight" and config.tie_word_embeddings)]
    if missing:
        raise UserError(f"The weights in {source} lack {len(missing)} tensors the config requires "
                        f"(first: {missing[0]}).",
                        "The weight files are incomplete or belong to a different model; copy the complete set.")
    if result.unexpected_keys:
        raise UserError(f"The weights in {source} hold {len(result.unexpected_keys)} tensors the config does not "
                        f"describe (first: {result.unexpected_keys[0]}).",
                        "Use the config.json that was released with these weights.")
    if config.tie_word_embeddings:
        get_module(model, family.lm_head).weight = get_module(model, family.embed).weight
    # Non-persistent buffers (RoPE inverse frequencies) are not in the file: rebuild them on the CPU.
    rotary = get_module(model, family.rotary)
    set_module(model, family.rotary, type(rotary)(config=config))
    on_meta = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if on_meta:
        raise RuntimeError(f"tensors left on the meta device after loading: {on_meta[:5]}")
    model.eval().requires_grad_(False)
    return model
