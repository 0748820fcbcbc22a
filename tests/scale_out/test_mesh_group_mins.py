"""A GGUF Q4_1 import (per-group float minimums, checkpoints/gguf_blocks.py) cut across tensor-parallel ranks: the
minimums are sliced with the scales (by input-channel group), so every rank's partial sums add up to the
single-process result on the torch, native and ONNX Runtime engines."""
from __future__ import annotations

import pytest

from test_mesh_runs import assert_same_as_single_process, on_mesh

from ..checkpoints.gguf_fixtures import write_cut_gguf


@pytest.fixture(scope="module")
def q4_1_import(tmp_path_factory) -> str:
    from edgeawq.tasks.quantize import quantize_task

    root = tmp_path_factory.mktemp("q4_1")
    source = write_cut_gguf(root / "smollm2-1layer.Q4_1.gguf", layers=1, linear_type="Q4_1")
    out = root / "imported"
    summary = quantize_task(str(source), str(out), 4, 32, True, "import", "run", None, None, False, 32, None, 128,
                            512, 0, False, progress=False)
    assert summary["algorithm"] == "gguf-q4_1"
    return str(out)


@pytest.mark.slow
def test_q4_1_import_on_a_tensor_parallel_mesh_gives_the_single_process_result(q4_1_import, tmp_path):
    runs = [dict(path=q4_1_import, engine=engine, act_dtype="fp32", target="cpu", options=options)
            for engine, options in (("torch", {}), ("native", {}), ("onnx", {"accuracy_level": 0}))]
    assert_same_as_single_process(runs, on_mesh("1x2", runs, tmp_path), "1x2")
