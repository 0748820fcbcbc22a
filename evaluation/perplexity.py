"""Perplexity with the AWQ/GPTQ-paper protocol (docs/quantization.md, "Perplexity").

The evaluation text (documents joined with "\n\n") is tokenized once without special tokens (no BOS), cut into
non-overlapping windows of `seqlen` tokens (the tail shorter than a window is dropped; `nsamples` keeps only
the first windows), and each window is scored independently: mean next-token NLL over all windows' predicted
positions (seqlen - 1 per window), perplexity = exp(mean NLL).

Datasets: "corpus-test" / "corpus-valid" (the shipped splits, default test), a local text file, or "wikitext2"
(wikitext-2-raw-v1 test split from the local Hugging Face datasets cache).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data_sources import EVAL_TEXTS, corpus_split, offline_datasets
from ..errors import UserError
from ..progress import bar
from ..runtime.chunked_prefill import forward_chunked

JOIN = "\n\n"


@dataclass
class Protocol:
    dataset: str
    join: str
    seqlen: int
    windows: int
    tokens_scored: int
    bos: str
    dtype: str
    target: str


def load_eval_text(dataset: str) -> tuple[str, str]:
    """-> (text, description)."""
    if dataset in ("corpus-test", "corpus-valid"):
        path = corpus_split(dataset.split("-")[1])
        return path.read_text(encoding="utf-8"), f"shipped corpus {path.stem} split"
    if dataset in EVAL_TEXTS:
        path = EVAL_TEXTS[dataset]
        return path.read_text(encoding="utf-8"), f"{dataset} ({path.name}: Python 3.11 tutorial and FAQ prose)"
    if dataset == "wikitext2":
        datasets = offline_datasets()
        try:
            ds = datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split="test")
        except Exception as exc:  # not cached: datasets raises connection or file errors offline
            raise UserError(f"wikitext2 is not in the local Hugging Face datasets cache ({type(exc).__name__}).",
                            "On a machine with network access run `python -c \"import datasets; datasets.load_dataset("
                            "'wikitext', 'wikitext-2-raw-v1', split='test')\"` and copy ~/.cache/huggingface/datasets "
                            "here, or pass a local text file to --dataset.") from None
        return JOIN.join(ds["text"]), "wikitext-2-raw-v1 test (local datasets cache)"
    path = Path(dataset).expanduser()
    if not path.is_file():
        raise UserError(f"--dataset {dataset!r} is not a known dataset or an existing file.",
                        "Use corpus-test, corpus-valid, python-docs, wikitext2, or the path of a UTF-8 text file.")
    try:
        return path.read_text(encoding="utf-8"), str(path)
    except UnicodeDecodeError:
        raise UserError(f"--dataset file {path} is not UTF-8 text.", "Provide a UTF-8 text file.") from None


def eval_windows(tokenizer, text: str, seqlen: int, nsamples: int | None, context: int) -> torch.Tensor:
    """-> token windows (n, seqlen)."""
    if seqlen > context:
        raise UserError(f"--seqlen {seqlen} is longer than the model's context of {context} tokens.",
                        f"Use --seqlen {context} or less.")
    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
    n = ids.numel() // seqlen
    if nsamples is not None:
        n = min(n, nsamples)
    if n == 0:
        raise UserError(f"The evaluation text has {ids.numel()} tokens, fewer than one window of --seqlen {seqlen}.",
                        "Use a longer text or a smaller --seqlen.")
    return ids[: n * seqlen].view(n, seqlen)


@torch.no_grad()
def window_nll(engine, windows: torch.Tensor) -> torch.Tensor:
    """Summed next-token NLL per window (n,), float64. One window per forward (batch 1), or `engine.batch_rows`
    windows per forward for engines that split a batch between replicas (a data-parallel mesh)."""
    rows = max(1, int(getattr(engine, "batch_rows", 1)))
    out = []
    batches = [windows[i:i + rows] for i in range(0, windows.shape[0], rows)]
    for ids in bar(batches, "perplexity", unit="window" if rows == 1 else f"x{rows} windows"):
        n, T = ids.shape                                       # (n, T)
        engine.start(n, T)
        logits = forward_chunked(engine, ids, torch.arange(T).expand(n, T), torch.ones_like(ids), last_only=False)
        for row in range(n):
            out.append(F.cross_entropy(logits[row, :-1].float(), ids[row, 1:], reduction="sum").double())
    return torch.stack(out)


def perplexity(engine, windows: torch.Tensor) -> tuple[float, float]:
    """-> (perplexity, mean NLL) over all windows' predicted tokens."""
    total = window_nll(engine, windows).sum().item()
    mean = total / (windows.shape[0] * (windows.shape[1] - 1))
    return math.exp(mean), mean


def protocol(dataset_desc: str, windows: torch.Tensor, dtype: str, target: str) -> dict:
    n, T = windows.shape
    return asdict(Protocol(dataset_desc, repr(JOIN), T, n, n * (T - 1), "none (windows start mid-text)", dtype,
                           target))
