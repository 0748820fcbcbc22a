"""Build data/eval/python-docs.txt: a second real English text, never trained on and never used for calibration.

Source: the prose of the Python 3.11 documentation's tutorial and FAQ (reStructuredText sources of Debian's
``python3.11-doc`` package, /usr/share/doc/python3.11/html/_sources/{tutorial,faq}/*.rst.txt, PSF License; see
data/eval/SOURCES.md). Modern technical English, unlike the 1911 / hacker-slang dictionary entries of the shipped
corpus, so a quality table measured on both is not a measurement of one style.

Kept: paragraphs of prose. Dropped: literal blocks (an indented block after a line ending in "::"), interactive
sessions (">>>" / "..." lines), directives (".. name::" and their indented bodies), tables, section underlines,
comment lines. Inline markup is reduced to its text (:role:`text <target>` -> text, ``code`` -> code,
*emphasis* -> emphasis, footnote references and escaped spaces removed). One paragraph per line, files in sorted order, a blank line between files.

Reproduce (the committed output is what this prints, byte for byte):
    apt-get install python3.11-doc && python scripts/build_eval_text.py
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

SOURCES = Path("/usr/share/doc/python3.11/html/_sources")
PARTS = ("tutorial", "faq")
ROLE = re.compile(r":[a-z:]+:`(?:[^`<]*?<)?~?([^`<>]+?)>?`")
LITERAL = re.compile(r"``([^`]+)``")
EMPHASIS = re.compile(r"\*\*?([^*\s][^*]*?)\*\*?")
LINK = re.compile(r"`([^`<]+?)\s*<[^`>]+>`_+")
UNDERLINE = re.compile(r"^([=\-~^*#\"'+.])\1{2,}\s*$")


def inline(text: str) -> str:
    text = ROLE.sub(r"\1", text)
    text = LINK.sub(r"\1", text)
    text = LITERAL.sub(r"\1", text)
    text = EMPHASIS.sub(r"\1", text)
    text = re.sub(r"\s*\[#\w*\]_", "", text)          # footnote references
    return text.replace("\\ ", "")


def paragraphs(rst: str) -> list[str]:
    out, cur = [], []
    skip_indent: int | None = None      # inside a literal block or directive body: skip lines indented deeper
    literal_next = False

    def flush():
        if cur:
            para = inline(" ".join(cur)).strip()
            if para.endswith("::"):
                para = para[:-1]
            if len(para.split()) >= 4:
                out.append(re.sub(r"\s+", " ", para))
            cur.clear()

    for line in rst.splitlines():
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if skip_indent is not None:
            if not stripped or indent > skip_indent:
                continue
            skip_indent = None
        if not stripped:
            flush()
            if literal_next:
                skip_indent, literal_next = last_indent, False
            continue
        if stripped.startswith((">>>", "...", "|", "+-", "=", ".. ")) or UNDERLINE.match(stripped):
            flush()
            if stripped.startswith(".. "):
                skip_indent = indent
            continue
        cur.append(stripped)
        last_indent = indent
        if stripped.endswith("::"):
            flush()
            literal_next = True
    flush()
    return out


def build() -> str:
    docs = []
    for part in PARTS:
        for path in sorted((SOURCES / part).glob("*.rst.txt")):
            paras = paragraphs(path.read_text(encoding="utf-8"))
            if paras:
                docs.append("\n".join(paras))
    return "\n\n".join(docs) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "data" / "eval" / "python-docs.txt")
    args = ap.parse_args()
    if not SOURCES.is_dir():
        raise SystemExit(f"{SOURCES} is missing: apt-get install python3.11-doc")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(build(), encoding="utf-8")
    print(args.out, args.out.stat().st_size)


if __name__ == "__main__":
    main()
