"""Load the tokenizer of a local model folder, offline.

Hugging Face folders: whatever `AutoTokenizer` reads (tokenizer.json, tokenizer_config.json, tokenizer.model,
vocab/merges), with `local_files_only=True`. Meta-format folders: `tokenizer.model`, either a SentencePiece
model (Llama 2: <s> added in front, [INST] chat template) or a tiktoken rank file (Llama 3: lines
"<base64 token> <rank>", the 256 Llama 3 special tokens numbered from the first id after the ranks,
<|begin_of_text|> added in front, header/eot chat template; needs the `tiktoken` package).
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")

# Llama 3's pre-tokenizer split pattern and special tokens (from Meta's reference tokenizer).
_LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                   r"|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA2_CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} "
                        "[/INST]{% else %} {{ m['content'] }} {{ eos_token }}{% endif %}{% endfor %}")
LLAMA3_CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
                        "{{ m['content'] }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}"
                        "<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
_LLAMA3_SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                   "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|step_id|>",
                   "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"]


def _generic_tokenizer_json(model_dir: Path) -> bool:
    """True when the folder's tokenizer is a plain tokenizer.json (tokenizer_class TokenizersBackend or
    PreTrainedTokenizerFast), not a model-specific class."""
    config = model_dir / "tokenizer_config.json"
    if not (model_dir / "tokenizer.json").exists() or not config.exists():
        return False
    try:
        cls = json.loads(config.read_text()).get("tokenizer_class")
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return cls in ("TokenizersBackend", "PreTrainedTokenizerFast")


def _is_sentencepiece(path: Path) -> bool:
    head = path.read_bytes()[:64]
    try:
        head.decode("ascii")
    except UnicodeDecodeError:
        return True  # a protobuf, not base64 text lines
    return False


def load_tokenizer(model_dir: Path, meta_format: bool = False):
    """Return a transformers fast tokenizer for the folder, padding on the left."""
    from transformers import AutoTokenizer, LlamaTokenizer, PreTrainedTokenizerFast

    if not any((model_dir / name).exists() for name in TOKENIZER_FILES):
        raise UserError(f"No tokenizer files in {model_dir} (looked for {', '.join(TOKENIZER_FILES)}).",
                        "Copy the tokenizer files from the original model release into that folder.")
    try:
        if not meta_format and _generic_tokenizer_json(model_dir):
            # transformers picks a tokenizer class from config.json's model_type (e.g. Qwen2Tokenizer), which
            # rebuilds the normalizer and pre-tokenizer; a generic tokenizer.json must be used exactly as written.
            tok = PreTrainedTokenizerFast.from_pretrained(str(model_dir), local_files_only=True)
        elif not meta_format:
            tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        elif _is_sentencepiece(model_dir / "tokenizer.model"):
            tok = LlamaTokenizer.from_pretrained(str(model_dir), local_files_only=True, legacy=True,
                                                 add_bos_token=True, add_prefix_space=True)
            tok.chat_template = LLAMA2_CHAT_TEMPLATE
        else:
            tok = _tiktoken_tokenizer(model_dir / "tokenizer.model", PreTrainedTokenizerFast)
    except UserError:
        raise
    except Exception as exc:  # transformers raises many types for unreadable tokenizer files
        raise UserError(f"The tokenizer in {model_dir} could not be loaded ({type(exc).__name__}: {exc}).",
                        "Check that the tokenizer files are complete and match the model.") from None
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def _tiktoken_tokenizer(path: Path, fast_cls):
    try:
        import tiktoken  # noqa: F401  (transformers' converter imports it)
    except ImportError:
        raise UserError(f"{path} is a tiktoken (Llama 3) tokenizer and the `tiktoken` package is not installed.",
                        "Install it with `pip install tiktoken` and run again.") from None
    from tokenizers import processors
    from transformers.convert_slow_tokenizer import TikTokenConverter

    special = _LLAMA3_SPECIAL + [f"<|reserved_special_token_{i}|>" for i in range(2, 256 - len(_LLAMA3_SPECIAL) + 2)]
    backend = TikTokenConverter(vocab_file=str(path), pattern=_LLAMA3_PATTERN,
                                extra_special_tokens=special).converted()
    bos = "<|begin_of_text|>"
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, backend.token_to_id(bos))])
    return fast_cls(tokenizer_object=backend, bos_token=bos, eos_token="<|end_of_text|>",
                    chat_template=LLAMA3_CHAT_TEMPLATE, model_max_length=131072)


def meta_eos_ids(tokenizer) -> list[int]:
    """End-of-sequence ids of a Meta-format tokenizer: eos, plus <|eom_id|> and <|eot_id|> for Llama 3."""
    ids = [tokenizer.eos_token_id]
    for extra in ("<|eom_id|>", "<|eot_id|>"):
        tid = tokenizer.convert_tokens_to_ids(extra)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid is not None:
            ids.append(tid)
    return ids
