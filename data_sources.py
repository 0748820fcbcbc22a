"""Where the shipped data lives, and offline access to the local Hugging Face datasets cache."""
from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent
CORPUS_DIR = ROOT / "data" / "corpus"          # train.txt, valid.txt, test.txt (see SOURCES.md there)
EVAL_TEXTS = {"python-docs": ROOT / "data" / "eval" / "python-docs.txt"}   # evaluation only (data/eval/SOURCES.md)
SHAPES_DIR = ROOT / "configs" / "shapes"       # configs of real model shapes, for random-weight benchmarks


def corpus_split(split: str) -> Path:
    """The shipped corpus file of `split` ("train", "valid" or "test")."""
    return CORPUS_DIR / f"{split}.txt"


def offline_datasets():
    """The `datasets` module, told never to reach the network (only the local cache is read)."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import datasets

    return datasets
