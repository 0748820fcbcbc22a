"""The package's own folder (the repository root) never stays on sys.path, where its subfolders would shadow
top-level packages of the same name (transformers >= 5.25 imports the PyPI `kernels`); and the huge-page re-exec
runs exactly the command line that was given."""
from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROBE = ("import importlib.util, os, sys\nimport edgeawq\nspec = importlib.util.find_spec('kernels')\n"
         "print(spec.origin if spec else None)\nprint([p for p in sys.path if os.path.abspath(p or '.') == os.getcwd()])")


def test_run_from_the_repository_root_the_root_leaves_sys_path():
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True)  # adds '' first
    assert proc.returncode == 0, proc.stderr
    kernels, root_entries = proc.stdout.strip().splitlines()[-2:]
    assert kernels != str(ROOT / "kernels" / "__init__.py"), kernels   # a PyPI `kernels` if installed, else none
    assert root_entries == "[]"


def test_huge_page_re_exec_repeats_the_original_command_line(monkeypatch):
    from edgeawq import cli

    calls = []
    monkeypatch.delenv("EDGEAWQ_NO_HUGEPAGES", raising=False)
    monkeypatch.setenv("GLIBC_TUNABLES", "")
    monkeypatch.setattr(cli, "open", lambda *a, **k: io.StringIO("always [madvise] never"), raising=False)
    monkeypatch.setattr(cli.os, "execv", lambda exe, args: calls.append((exe, args)))
    monkeypatch.setattr(sys, "orig_argv", ["python3", "-P", "-X", "utf8", "/venv/bin/run_awq", "decode", "--debug"])
    cli._with_huge_pages(None)
    assert calls == [(sys.executable, [sys.executable, "-P", "-X", "utf8", "/venv/bin/run_awq", "decode", "--debug"])]
    assert "glibc.malloc.hugetlb=1" in cli.os.environ["GLIBC_TUNABLES"]
