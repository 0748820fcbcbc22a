"""Calibration data for AWQ: `n_samples` blocks of `seqlen` tokens, drawn with a seed.

Sources (`--calib_dataset`):
  * omitted: the shipped corpus' train split (data/corpus/train.txt);
  * a local file: `.txt` (the whole text), `.jsonl` (one JSON object per line; its "text" field), or `.parquet`
    (its "text" column);
  * otherwise a Hugging Face dataset name that is already in the local `datasets` cache (offline), using
    the "text" column of its "validation" split if there is one, else "train" (e.g. `mit-han-lab/pile-val-backup`).
The text is tokenized as one stream (documents joined with "\n\n", no special tokens) and `n_samples` windows of
`seqlen` tokens start at positions drawn uniformly with `torch.Generator().manual_seed(seed)`.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..data_sources import corpus_split, offline_datasets
from ..errors import UserError

def _texts_from_file(path: Path) -> list[str]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if "text" not in table.column_names:
            raise UserError(f"Calibration file {path} has no 'text' column (columns: {table.column_names}).",
                            "Provide a parquet file with a 'text' column.")
        return [t for t in table.column("text").to_pylist() if t]
    raw = path.read_text(encoding="utf-8", errors="strict")
    if suffix == ".jsonl":
        texts = []
        for n, line in enumerate(raw.splitlines(), start=1):
            if line.strip():
                try:
                    texts.append(json.loads(line)["text"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise UserError(f"Calibration file {path}, line {n}, is not a JSON object with a 'text' field.",
                                    'Write one {"text": "..."} object per line.') from None
        return texts
    return [raw]


def _texts_from_hf_cache(name: str) -> list[str]:
    datasets = offline_datasets()
    try:
        ds = datasets.load_dataset(name, download_mode="reuse_cache_if_exists")
    except Exception as exc:  # datasets raises many types when the data is not cached offline
        raise UserError(f"Calibration dataset {name!r} is neither a local file nor in the local Hugging Face datasets "
                        f"cache ({type(exc).__name__}).",
                        "Pass a local .txt/.jsonl/.parquet file to --calib_dataset, or load the dataset once on a "
                        "machine with network access and copy ~/.cache/huggingface/datasets here.") from None
    split = "validation" if "validation" in ds else next(iter(ds))
    if "text" not in ds[split].column_names:
        raise UserError(f"Dataset {name!r} split {split!r} has no 'text' column.", "Use a text dataset.")
    return [t for t in ds[split]["text"] if t]


def load_texts(source: str | None) -> tuple[list[str], str]:
    """The documents of a calibration source and a description of where they came from."""
    if source is None:
        path = corpus_split("train")
        return [path.read_text(encoding="utf-8")], f"shipped corpus train split ({path.name})"
    path = Path(source).expanduser()
    if path.exists():
        try:
            return _texts_from_file(path), str(path)
        except UnicodeDecodeError:
            raise UserError(f"Calibration file {path} is not UTF-8 text.", "Provide a UTF-8 text file.") from None
    return _texts_from_hf_cache(source), f"Hugging Face dataset {source} (local cache)"


def calibration_blocks(tokenizer, source: str | None = None, n_samples: int = 128, seqlen: int = 512,
                       seed: int = 0) -> torch.Tensor:
    """-> token ids (n_samples, seqlen), int64."""
    if n_samples < 1 or seqlen < 2:
        raise UserError(f"--n_samples {n_samples} / --seqlen {seqlen} is invalid.",
                        "Use at least 1 sample of at least 2 tokens.")
    texts, where = load_texts(source)
    ids = torch.tensor(tokenizer("\n\n".join(texts), add_special_tokens=False)["input_ids"], dtype=torch.long)
    if ids.numel() < seqlen + 1:
        raise UserError(f"The calibration text from {where} has {ids.numel()} tokens, fewer than --seqlen {seqlen}.",
                        "Use a larger calibration text or a smaller --seqlen.")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seqlen + 1, (n_samples,), generator=gen)
    return torch.stack([ids[s:s + seqlen] for s in starts.tolist()])


def search_sample_indices(n_samples: int, seqlen: int, search_tokens: int) -> list[int] | None:
    """The calibration samples the scale-search loss is measured on: ceil(search_tokens / seqlen) whole samples,
    evenly spaced over the n_samples (sample i * n_samples // k for i < k), or None (all samples) when
    search_tokens is 0 or covers them all. The activation statistic x_bar always uses every sample."""
    if search_tokens < 0:
        raise UserError(f"--search_tokens {search_tokens} is negative.", "Use 0 (all tokens) or a positive count.")
    k = -(-search_tokens // seqlen)
    if search_tokens == 0 or k >= n_samples:
        return None
    return [i * n_samples // k for i in range(k)]
