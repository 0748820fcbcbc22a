"""benchmarks/plots.py draws one PNG per committed result file it knows, from the JSON lines alone."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_plots_from_the_committed_results(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("plots", ROOT / "benchmarks" / "plots.py")
    plots = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plots)
    written = plots.main(["--out", str(tmp_path)])
    assert sorted(p.name for p in written) == sorted(plots.PLOTS)
    for p in written:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {Path(line["plot"]).name for line in lines} == set(plots.PLOTS)
