"""benchmarks/scale_out.py --table renders the README's scale-out table from the committed JSON lines, and the
README holds exactly that table."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_readme_table_is_the_committed_results():
    spec = importlib.util.spec_from_file_location("scale_out_bench", ROOT / "benchmarks" / "scale_out.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    lines = [json.loads(x) for x in (ROOT / "benchmarks/results/scale_out.jsonl").read_text().splitlines() if x]
    table = bench.table(lines)
    rows = table.splitlines()[2:]
    assert len(rows) == sum("decode_tokens_per_s" in d for d in lines) >= 12
    assert {(r.split(" | ")[1], r.split(" | ")[3]) for r in rows} >= {("2x1", "2"), ("1x2", "1"), ("1x2 pp2", "1")}
    assert table in (ROOT / "README.md").read_text()
