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
from typing import Callable

import torch
import transformers
from torch import nn

from .. import default_models
from ..checkpoints import autoawq, gguf_format, gptq_hf, hf_files, meta_format
from ..checkpoints.directory import verify_manifest
from ..checkpoints.hf_files import CheckedTensors
from ..checkpoints.tokenizer_files import load_tokenizer, meta_eos_ids
from ..errors import UserError
from ..kernels.kv_quant import KEY_SCALE, VALUE_SCALE
from ..kernels.qlinear import QLinearPerGrp
from .config_check import check_config
from .families import FAMILIES, Family, supported_types
from .module_paths import get_module, set_module
from .quantized_model import QuantLayout, install_kv_scales, install_qlinears

# quantization_config["quant_method"] -> reader: check(folder, qconfig); to_native(qconfig, family) -> native
# qconfig; translate(state, qconfig, family, folder) -> state with native tensor names and layouts
@dataclass(frozen=True)
class QuantReader:
    check: Callable[[Path, dict], None]
    to_native: Callable[[dict, Family], dict]
    translate: Callable[[dict, dict, Family, Path], dict]


QUANT_READERS = {
    "edgeawq": QuantReader(lambda folder, q: verify_manifest(folder), lambda q, f: q, lambda s, q, f, p: s),
    "awq": QuantReader(lambda folder, q: autoawq.check_autoawq_config(q, folder),
                       lambda q, f: autoawq.native_quantization_config(q, f.linears),
                       lambda s, q, f, p: autoawq.import_state(s)),
    "gptq": QuantReader(lambda folder, q: gptq_hf.check_gptq_config(q, folder),
                        lambda q, f: gptq_hf.native_quantization_config(q, f.linears),
                        lambda s, q, f, p: gptq_hf.import_state(s, q, f.layers, f.linears, p)),
}

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
# activation modes of quantized Linears -> activation dtype; "aie" = bf16 with the Ryzen AI kernel's numerics
ACT_MODES = {**DTYPES, "aie": torch.bfloat16}
IGNORED_KEYS = ("rotary_emb.inv_freq",)  # stale buffers in some older checkpoints: never loaded


@dataclass
class LoadedModel:
    model: nn.Module          # the transformers CausalLM (modules possibly swapped by fuse_model)
    config: object            # its transformers config
    family: Family
    tokenizer: object
    source: Path
    dtype: torch.dtype
    quant: "QuantLayout | None" = None   # set for quantized checkpoints
    fingerprint: str | None = None       # identity of in-memory models (random weights); None = the folder's files

    @property
    def max_context(self) -> int:
        """The longest context the model runs: max_position_embeddings, or more where its RoPE scaling implies
        more (runtime/rope_extension.py)."""
        from .rope_extension import context_limit

        return context_limit(self.config)


def _check_folder(path: Path) -> None:
    if not path.exists():
        raise UserError(f"Model path {path} does not exist.",
                        "Pass --model with a local checkpoint folder, or omit --model to use the embedded default "
                        f"model ({', '.join(default_models.DEFAULT_MODELS)}).")
    if not path.is_dir():
        raise UserError(f"Model path {path} is a file, not a folder.",
                        "Pass the folder that holds config.json and the weight files.")


def read_config(path: Path) -> tuple[object, Family, dict | None]:
    """(transformers config, family row, quantization_config or None) of a Hugging Face folder.

    Unsupported model types and unknown quantization methods are refused."""
    raw = hf_files.read_json(path / "config.json", "Model config")
    model_type = raw.get("model_type")
    if not isinstance(model_type, str) or model_type not in FAMILIES:
        raise UserError(f"{path / 'config.json'} has model_type {model_type!r}, which this tool does not support.",
                        f"Supported model types: {supported_types()}.")
    check_config(raw, path / "config.json")
    quant = raw.pop("quantization_config", None)
    if quant is not None and quant.get("quant_method") not in QUANT_READERS:
        raise UserError(f"{path / 'config.json'} declares quantization method {quant.get('quant_method')!r}, which "
                        "this tool cannot load.", f"Supported: {', '.join(QUANT_READERS)} (or a float checkpoint).")
    return config_from_dict(raw, path / "config.json"), FAMILIES[model_type], quant


def config_from_dict(raw: dict, path: Path):
    """The transformers config of a checked raw config dict; what transformers still refuses is a UserError."""
    try:
        return transformers.AutoConfig.for_model(**raw)
    except Exception as exc:  # noqa: BLE001 - transformers raises ValueError, TypeError, KeyError... for bad values
        raise UserError(f"{path} describes a model transformers cannot configure ({type(exc).__name__}: "
                        f"{str(exc)[:300]}).", "Use the config.json that was released with the model's weights.") \
            from None


def build_skeleton(config, family: Family, source: Path) -> nn.Module:
    """`family.model_class(config)` on the meta device (no memory for weights); a config transformers cannot build
    a model from is a UserError naming the source."""
    try:
        with torch.device("meta"):
            return getattr(transformers, family.model_class)(config)
    except Exception as exc:  # noqa: BLE001 - model constructors raise many types for inconsistent configs
        raise UserError(f"The config of {source} describes a model transformers cannot build "
                        f"({type(exc).__name__}: {str(exc)[:300]}).",
                        "Use the config.json that was released with the model's weights.") from None


def rebuild_rotary(model: nn.Module, config, family: Family, source: Path) -> None:
    """Non-persistent buffers (RoPE inverse frequencies) are not in the file: rebuild them on the CPU."""
    rotary = get_module(model, family.rotary)
    try:
        set_module(model, family.rotary, type(rotary)(config=config))
    except Exception as exc:  # noqa: BLE001 - RoPE initialisers raise KeyError/ValueError for missing settings
        raise UserError(f"The RoPE settings in the config of {source} are incomplete or invalid "
                        f"({type(exc).__name__}: {str(exc)[:300]}).",
                        "Use the config.json that was released with the model's weights.") from None


def check_names(source: Path, missing: list[str], extra: list[str]) -> None:
    """Tensors the config requires that the files lack, or hold that it does not describe: a UserError naming one."""
    if missing:
        raise UserError(f"The weights in {source} lack {len(missing)} tensors the config requires "
                        f"(first: {missing[0]}).",
                        "The weight files are incomplete or belong to a different model; copy the complete set.")
    if extra:
        raise UserError(f"The weights in {source} hold {len(extra)} tensors the config does not describe "
                        f"(first: {extra[0]}).", "Use the config.json that was released with these weights.")


def check_state_fits(expected: dict[str, tuple[int, ...]], actual: dict[str, tuple[torch.dtype, tuple[int, ...]]],
                     source: Path, optional: tuple[str, ...] = ()) -> None:
    """The tensors a file holds (name -> (dtype, shape)) against those the config implies (name -> shape): the same
    names (`optional` may be absent), the same shapes, float values. A mismatch is a UserError naming a tensor."""
    actual = {k: v for k, v in actual.items() if not k.endswith(IGNORED_KEYS)}
    check_names(source, [k for k in expected if k not in actual and k not in optional],
                [k for k in actual if k not in expected])
    for name, (dtype, shape) in actual.items():
        if tuple(expected[name]) != tuple(shape):
            raise UserError(f"Tensor {name} in {source} has shape {list(shape)}, but the config implies "
                            f"{list(expected[name])} (check vocab_size, hidden_size, intermediate_size and the head "
                            "counts).", "Use the config.json that was released with these weights.")
        if not dtype.is_floating_point:
            raise UserError(f"Tensor {name} in {source} is {dtype}; a float checkpoint holds float tensors.",
                            "Quantize the float model, not a converted or quantized copy of it.")


@dataclass
class CheckpointSource:
    """A local checkpoint opened for reading: config, family, tokenizer and memory-mapped tensors by name."""
    folder: Path
    config: object
    family: Family
    quant: dict | None          # quantization_config of a quantized checkpoint
    state: dict[str, torch.Tensor]
    tokenizer: object


def open_checkpoint(path: str | Path | None = None, streamed: bool = False, verify: bool = True,
                    with_tokenizer: bool = True) -> CheckpointSource:
    """Open a Hugging Face, Meta-format or quantized folder (None or an alias: an embedded default model).

    `streamed`: safetensors tensors are indexed, not mapped, and read one at a time by `state.load(name)`
    (for layer-by-layer passes whose memory must stay bounded). `verify=False` skips the check of a quantized
    checkpoint's files against its manifest (for the ranks of a mesh run whose launcher checked them in this run);
    `with_tokenizer=False` leaves `tokenizer` None for Hugging Face folders (ranks that never tokenize)."""
    folder = default_models.resolve(None if path is None else str(path))
    gguf_path = gguf_format.gguf_file(folder) if folder.exists() else None
    if gguf_path is not None:
        return _open_gguf(gguf_path, streamed)
    _check_folder(folder)
    if meta_format.is_meta_folder(folder):
        tokenizer = load_tokenizer(folder, meta_format=True)
        raw, state = meta_format.convert(folder, tokenizer.bos_token_id, meta_eos_ids(tokenizer))
        check_config(raw, folder / "params.json")
        return CheckpointSource(folder, config_from_dict(raw, folder / "params.json"), FAMILIES["llama"], None,
                                CheckedTensors(state, folder), tokenizer)
    if not (folder / "config.json").exists():
        raise UserError(f"{folder} is not a model folder: it has no config.json (Hugging Face format) and no "
                        "params.json + consolidated.*.pth (Meta format).",
                        "Point --model at the folder that holds the checkpoint's config and weight files.")
    config, family, quant = read_config(folder)
    reader = QUANT_READERS[quant["quant_method"]] if quant is not None else None
    if reader is not None:
        if verify:
            reader.check(folder, quant)
        raw_quant, quant = quant, reader.to_native(quant, family)
    files = hf_files.weight_files(folder)
    if not files:
        raise UserError(f"{folder} has a config.json but no weights (model.safetensors, "
                        "model.safetensors.index.json or pytorch_model.bin).",
                        "Copy the weight files of the checkpoint into that folder.")
    native_names = reader is None or reader is QUANT_READERS["edgeawq"]      # tensors need no translation
    if streamed and native_names and all(f.suffix == ".safetensors" for f in files):
        return CheckpointSource(folder, config, family, quant, hf_files.StreamedSafetensors(files),
                                load_tokenizer(folder) if with_tokenizer else None)
    state = hf_files.load_tensors(files)
    if reader is not None:
        state = reader.translate(state, raw_quant, family, folder)
    return CheckpointSource(folder, config, family, quant, hf_files.CheckedTensors(state, folder),
                            load_tokenizer(folder) if with_tokenizer else None)


def _open_gguf(path: Path, streamed: bool) -> CheckpointSource:
    """A GGUF file: config and tokenizer from its metadata, tensors dequantized when read (checkpoints/gguf_format)."""
    raw = gguf_format.read_config(path)
    check_config(raw, path)
    state = gguf_format.GGUFTensors(path, raw)
    if not streamed:
        state = CheckedTensors({name: state.load(name) for name in state}, path)
    return CheckpointSource(path.parent, config_from_dict(raw, path), FAMILIES[raw["model_type"]], None, state,
                            gguf_format.load_tokenizer(path))


def load_model(path: str | Path | None = None, dtype: str = "fp32", act_dtype: str = "bf16") -> LoadedModel:
    """Load a local checkpoint (None or an alias selects an embedded default model) for inference.

    `dtype` is the dtype of the float weights and activations; `act_dtype` the activation dtype inside quantized
    Linears (bf16 = w4abf16) when the checkpoint is quantized."""
    if dtype not in DTYPES:
        raise UserError(f"Unknown dtype {dtype!r}.", f"Use one of: {', '.join(DTYPES)}.")
    if act_dtype not in ACT_MODES:
        raise UserError(f"Unknown activation dtype {act_dtype!r}.", f"Use one of: {', '.join(ACT_MODES)}.")
    src = open_checkpoint(path)
    layout = QuantLayout.from_config(src.quant, src.family, src.folder) if src.quant is not None else None
    if act_dtype == "aie" and layout is not None and layout.act_quant is not None:
        raise UserError(f"{src.folder} is a W8A8 checkpoint (int8 activations, {layout.act_quant}); --act_dtype aie "
                        "emulates the NPU's bf16-activation kernel, which does not apply.",
                        "Drop --act_dtype aie (W8A8 activations are int8 whatever --act_dtype says).")
    model = build_from_state_dict(src.config, src.family, src.state, DTYPES[dtype], src.folder, layout,
                                  ACT_MODES[act_dtype])
    if act_dtype == "aie":
        for module in model.modules():
            if isinstance(module, QLinearPerGrp):
                module.numerics = "aie"
    return LoadedModel(model, src.config, src.family, src.tokenizer, src.folder, DTYPES[dtype], layout)


def build_from_state_dict(config, family: Family, state: dict[str, torch.Tensor], dtype: torch.dtype,
                          source: Path, layout: "QuantLayout | None" = None,
                          act_dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """Instantiate `family.model_class` on the meta device (with QLinearPerGrp shells where `layout` says) and
    assign `state` to it: float tensors cast to `dtype`, quantized buffers (packed, scales, zeros, mins) as
    stored."""
    config._attn_implementation = "sdpa"
    model = build_skeleton(config, family, source)
    if layout is not None:
        install_qlinears(model, family, layout, act_dtype)
        if layout.kv_channels:
            install_kv_scales(model, family, config)
    keep = (".packed", ".scales", ".zeros", ".mins", ".act_scale", "." + KEY_SCALE, "." + VALUE_SCALE)
    state = {k: (v.to(dtype) if v.is_floating_point() and not k.endswith(keep) else v) for k, v in state.items()
             if not k.endswith(IGNORED_KEYS)}
    try:
        result = model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as exc:
        raise UserError(f"The weights in {source} do not fit its config ({str(exc).splitlines()[-1].strip()}).",
                        "Use the config.json that was released with these weights.") from None
    tied_head = config.tie_word_embeddings and (layout is None or layout.lm_head_group_size is None)
    check_names(source, [k for k in result.missing_keys if not (k == f"{family.lm_head}.weight" and tied_head)],
                list(result.unexpected_keys))
    if tied_head:
        get_module(model, family.lm_head).weight = get_module(model, family.embed).weight
    rebuild_rotary(model, config, family, source)
    on_meta = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if on_meta:
        raise RuntimeError(f"tensors left on the meta device after loading: {on_meta[:5]}")
    model.eval().requires_grad_(False)
    return model
