"""docs/api.md's examples run as written, and the API is what edgeawq exports."""
from __future__ import annotations

import re
from pathlib import Path

import edgeawq

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def test_exports():
    assert set(edgeawq.__all__) >= {"quantize", "load", "Model", "UserError"}
    for name in ("quantize", "load"):
        assert getattr(edgeawq, name).__annotations__, name     # typed


def test_the_examples_of_docs_api_md_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EDGEAWQ_CACHE", str(tmp_path / "cache"))
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) >= 4
    scope: dict = {}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), scope)               # noqa: S102 - the documentation's own code
    out = capsys.readouterr().out
    assert "refused: Model path runs/no-such-model does not exist." in out and "tokens/s" in out
