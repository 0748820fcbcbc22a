"""Build the shipped English corpus (data/corpus/{train,valid,test}.txt) from two public-domain texts.

Sources (both public domain; see data/corpus/SOURCES.md):
  * The Jargon File 4.4.7 (Eric S. Raymond et al.), Debian package ``jargon-text``:
    /usr/share/doc/jargon-text/jargon.txt.gz
  * The Devil's Dictionary (Ambrose Bierce, 1911), Debian package ``dict-devil``:
    /usr/share/dictd/devil.dict.dz

Reproduce (the committed output is what this prints, byte for byte):
    apt-get download jargon-text dict-devil
    python scripts/build_corpus.py --jargon-deb jargon-text_*.deb --devil-deb dict-devil_*.deb

Format of the output: UTF-8 text, one paragraph per line (hard line wraps of the sources are joined),
documents (dictionary entries / book sections) separated by one blank line. Documents are grouped into
consecutive blocks of about 4 KB; block i goes to test when i % 10 == 9, to valid when i % 10 == 8,
else to train. The split is deterministic and has no randomness to seed.
"""
from __future__ import annotations

import argparse
import gzip
import re
import subprocess
import tempfile
from pathlib import Path

BLOCK_CHARS = 4096


def _extract_deb(deb: Path, member: str, workdir: Path) -> bytes:
    subprocess.run(["dpkg-deb", "-x", str(deb), str(workdir)], check=True)
    return gzip.decompress((workdir / member.lstrip("/")).read_bytes())


def _paragraphs(lines: list[str]) -> list[str]:
    """Join hard-wrapped lines into paragraphs; blank lines separate paragraphs."""
    out: list[str] = []
    cur: list[str] = []
    for line in lines:
        s = line.strip()
        if not s:
            if cur:
                out.append(" ".join(cur))
                cur = []
            continue
        cur.append(s)
    if cur:
        out.append(" ".join(cur))
    return [re.sub(r"\s+", " ", p) for p in out]


def _documents(lines: list[str], starts_document) -> list[str]:
    """Cut lines into documents at every line for which `starts_document(line)` holds; paragraphs joined."""
    docs: list[str] = []
    cur: list[str] = []
    for line in lines:
        if starts_document(line) and cur:
            docs.append("\n".join(_paragraphs(cur)))
            cur = []
        cur.append(line)
    if cur:
        docs.append("\n".join(_paragraphs(cur)))
    return [d for d in docs if d.strip()]


def jargon_documents(text: str) -> list[str]:
    """Introduction chapters plus every lexicon entry (the headword index in between is skipped)."""
    lines = text.splitlines()
    starts = [i for i, l in enumerate(lines) if l.strip() == "Welcome to the Jargon File"]
    intro_start = starts[1]
    glossary = [i for i, l in enumerate(lines) if l.strip() == "Glossary"]
    intro_end = glossary[1]
    first_entry = next(i for i, l in enumerate(lines) if l.startswith("   :") and i > intro_end)
    # Intro: a document per chapter; lexicon: a document per entry (an entry starts with ":headword:").
    intro = _documents(lines[intro_start:intro_end], lambda l: l.startswith("Chapter "))
    return intro + _documents(lines[first_entry:], lambda l: l.startswith("   :"))


def devil_documents(text: str) -> list[str]:
    """Every dictionary entry (an entry starts with an upper-case headword line such as 'FORK, n.')."""
    start = text.index("                              PREFACE")
    end = text.rindex(" abcdefghijklmnopqrstuvwxyz")
    lines = text[start:end].splitlines()
    head = re.compile(r"^[A-Z][A-Z' \-]+[,.]")
    return _documents(lines, lambda l: head.match(l) is not None)


def split_blocks(docs: list[str]) -> dict[str, list[str]]:
    splits: dict[str, list[str]] = {"train": [], "valid": [], "test": []}
    block: list[str] = []
    size = 0
    index = 0

    def flush() -> None:
        nonlocal block, size, index
        if not block:
            return
        name = "test" if index % 10 == 9 else "valid" if index % 10 == 8 else "train"
        splits[name].extend(block)
        block, size, index = [], 0, index + 1

    for doc in docs:
        block.append(doc)
        size += len(doc)
        if size >= BLOCK_CHARS:
            flush()
    flush()
    return splits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jargon-deb", type=Path, required=True)
    ap.add_argument("--devil-deb", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "data" / "corpus")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        jargon = _extract_deb(args.jargon_deb, "usr/share/doc/jargon-text/jargon.txt.gz", Path(tmp) / "j")
        devil = _extract_deb(args.devil_deb, "usr/share/dictd/devil.dict.dz", Path(tmp) / "d")
    docs = jargon_documents(jargon.decode("utf-8")) + devil_documents(devil.decode("utf-8", "replace"))
    args.out.mkdir(parents=True, exist_ok=True)
    for name, part in split_blocks(docs).items():
        text = "\n\n".join(part) + "\n"
        (args.out / f"{name}.txt").write_text(text, encoding="utf-8")
        print(f"{name}: {len(part)} documents, {len(text)} characters")


if __name__ == "__main__":
    main()
