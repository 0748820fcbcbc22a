"""Long context: the native engine against llama.cpp's llama-bench at cache depths up to 32k, in one interleaved run.

Per shape (random weights: ours w4 g128 with lm_head w4 g128; llama.cpp a Q4_0 GGUF of the shape, written as in
benchmarks/cpu_vs_peers.py) and depth D (tokens already in the KV cache):
* prefill tok/s of a --prompt-token prompt fed after the D cached tokens (llama-bench `-p 512 -d D`: pp512 @ dD);
* decode: ms per token over --new_tokens tokens generated after the D cached tokens (llama-bench `-n N -d D`);
* memory: peak RSS of the process (wait4), split into weights (ours: the model tensors the engine holds, i.e. the
  packed Linears, the lm_head, the embedding table and the norms; llama.cpp: the GGUF file, memory-mapped and read
  whole) and the KV cache (ours: the blocks the paged cache holds at the end; llama.cpp: its f16 cache of D +
  prompt + new slots, computed: llama-bench sizes the context to the test).
Ours runs with --kv_dtype fp16 (the element type of llama.cpp's default cache; --kv_dtypes adds others) and fills the
first D slots with random keys and values (benchmarks/decode_at_depth.py: time does not depend on the values), so
it skips the D-token prefill that llama-bench runs (untimed) before each test.
llama.cpp runs with llama-bench's defaults (`-fa auto`: flash attention, on for the CPU; `-ub 512`); --llama_args
adds options, one llama.cpp engine per string (`"" "-fa off"`: both). `-fa off` is faster on our machine in
prefill and decode at depth, and makes the untimed depth prefill short enough for a 32k depth on the Llama-2-7B
layout; there its attention scores of a 512-token ubatch take 2 GB or more, and `-ub 128` cuts them to a quarter
for a machine of 24 GiB (README "Long context").
`--engines llama-server` measures llama.cpp through `llama-server` instead (LlamaServerAtDepth: llama-bench keeps
a second copy of a depth's KV state, which at 32k on the 7B layout does not fit 24 GiB). Its depth is prefilled
(`--llama_depth prefill`: 2.5 hours or more at 32k on that layout here, longer than a working session) or restored
from a state file of zero keys and values (`--llama_depth restore`, benchmarks/llama_state_file.py: seconds), as
ours skips its depth prefill; `--llama_depth prefill restore` measures both, to compare them.
Flatness per engine: decode ms/token at the deepest depth over that at the shallowest (1.0 = no slowdown).
Each round runs every (depth, engine) once, engines in rotating order, each measurement in its own process
(2 threads). JSON lines, then a markdown table.

Usage: python benchmarks/long_context.py [--plan llama-3.2-1b:512,2048,8192,32768 yarn-llama-2-7b-64k:512,2048]
       [--rounds 1] [--prompt 512] [--new_tokens 64] [--llama_args ""] [--llama_depth prefill]
       [--work runs/peers] [--out F.jsonl]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from cpu_vs_peers import THREADS, LlamaCpp, run_rss
from jsonl_io import append_jsonl

ROOT = Path(__file__).resolve().parent.parent


def ours_child(args) -> dict:
    """One measurement in this process: prefill and decode at depth, memory."""
    import numpy as np
    import torch

    from decode_at_depth import decode_tok_s, fill
    from edgeawq.evaluation.benchmark import peak_rss_bytes
    from edgeawq.kernels.quantizer import QuantSpec
    from edgeawq.runtime.backends import BACKENDS, EngineOptions
    from edgeawq.runtime.chunked_prefill import forward_chunked
    from edgeawq.runtime.random_model import random_quantized_model

    torch.set_num_threads(THREADS)
    loaded = random_quantized_model(args.shape, QuantSpec(4, 128).validate(), torch.bfloat16, torch.float32,
                                    lm_head_group_size=128)
    vocab = loaded.config.vocab_size
    engine = BACKENDS["cpu"].make_engine(loaded, EngineOptions(engine="native", kv_dtype=args.kv_dtype))
    depth, prompt = args.depth, args.prompt
    engine.start(1, depth + prompt + args.new_tokens)
    fill(engine, depth)
    ids = torch.randint(3, vocab, (1, prompt), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(1, depth + prompt, dtype=torch.long)
    with torch.inference_mode():
        t0 = time.perf_counter()
        forward_chunked(engine, ids, torch.arange(depth, depth + prompt)[None], mask)
        prefill_s = time.perf_counter() - t0
    engine.lengths = np.array([depth], np.int64)                  # decode from depth D (the prompt's slots reused)
    tok_s = decode_tok_s(engine, depth, args.new_tokens + 1, vocab)
    return {"prefill_tok_s": prompt / prefill_s, "decode_ms_per_token": 1000 / tok_s,
            "weights_bytes": engine.weights_bytes, "kv_bytes": engine.kv_bytes,
            "child_peak_rss_bytes": peak_rss_bytes()}


class Ours:
    def __init__(self, shape: str, kv_dtype: str) -> None:
        self.shape, self.kv_dtype, self.name = shape, kv_dtype, f"ours ({kv_dtype} KV)"

    def measure(self, depth: int, prompt: int, new: int) -> dict:
        out, rss = run_rss([sys.executable, __file__, "--child", "--shape", self.shape, "--kv_dtype", self.kv_dtype,
                            "--depth", str(depth), "--prompt", str(prompt), "--new_tokens", str(new)])
        row = json.loads(out.strip().splitlines()[-1])
        return {**row, "peak_rss_bytes": rss}


def engine_name(base: str, extra: list[str]) -> str:
    """A llama.cpp engine's name: `base`, with its added options in parentheses when there are any."""
    return f"{base} ({' '.join(extra)})" if extra else base


class LlamaBench:
    """extra: llama-bench options added to every test ("" = its defaults, the engine named plain "llama.cpp")."""

    def __init__(self, shape: str, work: Path, extra: str = "") -> None:
        self.peer = LlamaCpp(shape, work)
        self.extra = extra.split()
        self.name = engine_name("llama.cpp", self.extra)

    def available(self) -> str | None:
        return self.peer.available()

    def prepare(self) -> None:
        self.peer.prepare()

    def measure(self, depth: int, prompt: int, new: int) -> dict:
        from edgeawq.runtime.random_model import read_shape

        out, rss = run_rss([self.peer.exe, "-m", str(self.peer.gguf), "-t", str(THREADS), "-r", "1", "-o", "jsonl",
                            *self.extra, "-p", str(prompt), "-n", str(new), "-d", str(depth)])
        rows = [json.loads(line) for line in out.strip().splitlines() if line.startswith("{")]
        pp = next(r for r in rows if r["n_prompt"] == prompt and r["n_gen"] == 0)
        tg = next(r for r in rows if r["n_gen"] == new and r["n_prompt"] == 0)
        slots = depth + max(prompt, new)                                # the larger of the two tests' contexts
        return {"prefill_tok_s": pp["avg_ts"], "decode_ms_per_token": 1000 / tg["avg_ts"],
                "weights_bytes": self.peer.gguf.stat().st_size,
                "kv_bytes": f16_cache_bytes(read_shape(self.peer.shape), slots), "peak_rss_bytes": rss,
                "flash_attn": pp.get("flash_attn"), "n_ubatch": pp.get("n_ubatch"), "type_k": pp.get("type_k")}


class LlamaServerAtDepth:
    """llama.cpp at a depth through `llama-server` (one slot, context depth + prompt + new): where llama-bench cannot
    go. llama-bench keeps a copy of the sequence's KV state after its depth prefill (to reuse across repetitions),
    so a depth needs twice its cache in memory: the 7B layout's f16 cache at 32k is 17.4 GB, twice that does not fit
    24 GiB. Here the cache is held once (`--cache-ram 0`: no host copies of prompts either).

    Request 1 (/completion, token ids, greedy, ignore_eos): the D depth tokens, then --new_tokens generated:
    decode ms/token = predicted_ms / (predicted_n - 1) (the first token comes from the prompt's logits, each later
    one from a decode step at depth D and up). Request 2: the same D tokens plus --prompt new ones, 1 token generated:
    the slot's cache keeps the D-token prefix (cache_prompt), so the server prefills exactly the --prompt new tokens
    (checked: timings.prompt_n), its prompt_per_second being llama-bench's pp512 at dD. The depth prefill's own rate
    is recorded too. Peak RSS: the server's VmHWM.

    depth="restore": instead of prefilling the D tokens (2.5 hours or more at 32k on the 7B layout here, which
    no session can wait for), the slot restores them from a sequence state file of D zero keys and values
    (llama_state_file.py; `--slot-save-path`, `POST /slots/0?action=restore`), with the same token ids, so request 1
    finds all D cached and evaluates only the last one again (checked: prompt_n == 1). Its restore time is recorded
    instead of the depth prefill rate. The engine's name says "restored depth"."""

    def __init__(self, shape: str, work: Path, extra: str = "", depth: str = "prefill") -> None:
        from serve_load import llama_server_exe

        if depth not in ("prefill", "restore"):
            raise ValueError(f"depth must be 'prefill' or 'restore', not {depth!r}")
        self.peer = LlamaCpp(shape, work)
        self.exe = llama_server_exe()
        self.extra = extra.split()
        self.restore = depth == "restore"
        self.name = engine_name("llama-server", self.extra) + (", restored depth" if self.restore else "")

    def available(self) -> str | None:
        return None if self.exe else "llama-server not found (bash scripts/build_llama_cpp.sh builds it)"

    def prepare(self) -> None:
        self.peer.prepare()

    def measure(self, depth: int, prompt: int, new: int) -> dict:
        import random

        from serve_load import ServerProcess, free_port, rss_mb
        from edgeawq.runtime.random_model import read_shape

        c = read_shape(self.peer.shape)
        ids = random.Random(depth).choices(range(3, c["vocab_size"]), k=depth + prompt)
        context = depth + prompt + new
        port = free_port()
        with tempfile.TemporaryDirectory(prefix="llama-depth-") as slots:
            restore = ["--slot-save-path", slots] if self.restore else []
            server = ServerProcess(self.name, [self.exe, "-m", str(self.peer.gguf), "--host", "127.0.0.1", "--port",
                                               str(port), "-t", str(THREADS), "-tb", str(THREADS), "-np", "1",
                                               "-c", str(context), "--cache-ram", "0", "--no-webui", *restore,
                                               *self.extra], port)
            try:
                restored = self.restore_depth(port, Path(slots), c, ids[:depth]) if self.restore else None
                first = complete(port, ids[:depth], new)
                second = complete(port, ids, 1)
                peak = rss_mb(server.proc.pid)
            finally:
                server.stop()
        if second["prompt_n"] != prompt or first["predicted_n"] != new or (restored and first["prompt_n"] != 1):
            raise RuntimeError(f"{self.name}: expected {prompt} prompt tokens after the cached {depth} and {new} "
                               f"generated{' (1 token evaluated after the restored depth)' if restored else ''}, "
                               f"got timings {first} / {second}")
        if peak is None:
            raise RuntimeError(f"{self.name}: no peak RSS in /proc/{server.proc.pid}/status")
        depth_cost = ({"depth_restore_ms": restored["timings"]["restore_ms"]} if restored else
                      {"depth_prefill_tok_s": first["prompt_per_second"]})
        return {"prefill_tok_s": second["prompt_per_second"],
                "decode_ms_per_token": first["predicted_ms"] / (first["predicted_n"] - 1), **depth_cost,
                "weights_bytes": self.peer.gguf.stat().st_size, "kv_bytes": f16_cache_bytes(c, context),
                "peak_rss_bytes": int(peak * 2 ** 20)}

    def restore_depth(self, port: int, slots: Path, c: dict, ids: list[int]) -> dict:
        """Write the state file of `ids` cached (zero keys and values) and restore it into slot 0 -> the reply."""
        from llama_state_file import write_depth_state

        write_depth_state(slots / "depth.bin", ids, c["num_hidden_layers"], kv_width(c),
                          v_trans=not flash_attention(self.extra))
        reply = post_json(port, "/slots/0?action=restore", {"filename": "depth.bin"})
        if reply.get("n_restored") != len(ids):
            raise RuntimeError(f"{self.name}: restoring {len(ids)} cached tokens gave {reply}")
        return reply


def flash_attention(extra: list[str]) -> bool:
    """Whether llama.cpp runs with flash attention under options `extra`: `-fa`/`--flash-attn` off disables it; on
    and auto (the default) enable it on the CPU. Without it, llama.cpp stores V transposed in its cache."""
    for i, arg in enumerate(extra[:-1]):
        if arg in ("-fa", "--flash-attn"):
            return extra[i + 1] not in ("off", "0", "false")
    return True


def kv_width(c: dict) -> int:
    """Elements of one token's keys (or values) in one layer for shape config `c`: KV heads x head_dim."""
    head_dim = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    return c.get("num_key_value_heads", c["num_attention_heads"]) * head_dim


def f16_cache_bytes(c: dict, slots: int) -> int:
    """llama.cpp's default KV cache (f16 keys and values) of `slots` slots for shape config `c`."""
    return 2 * c["num_hidden_layers"] * kv_width(c) * 2 * slots


def complete(port: int, ids: list[int], new: int) -> dict:
    """POST /completion with token ids, greedy, `new` tokens (end of sequence ignored) -> the reply's timings."""
    return post_json(port, "/completion", {"prompt": ids, "n_predict": new, "ignore_eos": True, "temperature": 0.0,
                                           "cache_prompt": True})["timings"]


def post_json(port: int, path: str, request: dict) -> dict:
    """POST `request` as JSON to llama-server's `path` -> its JSON reply (an error names the reply)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=6 * 3600)      # a 32k depth prefill takes hours
    try:
        conn.request("POST", path, body=json.dumps(request), headers={"content-type": "application/json"})
        reply = conn.getresponse()
        data = json.loads(reply.read())
        if reply.status != 200:
            raise RuntimeError(f"llama-server {path} failed ({reply.status}): {data}")
        return data
    finally:
        conn.close()


def parse_plan(items: list[str], tokens_after: int) -> list[tuple[str, list[int]]]:
    """"shape:depth,depth,..." items -> [(shape, depths)]; exits naming the problem when a depth plus the
    `tokens_after` it (prompt + new tokens) exceeds the shape's context (before any hours-long test runs)."""
    from types import SimpleNamespace

    from edgeawq.runtime.random_model import read_shape
    from edgeawq.runtime.rope_extension import context_limit, context_note

    plan = []
    for item in items:
        shape, _, text = item.partition(":")
        try:
            depths = [int(d) for d in text.split(",")]
        except ValueError:
            raise SystemExit(f"--plan {item!r}: give shape:depth,depth,... (e.g. llama-3.2-1b:512,2048)")
        config = SimpleNamespace(**read_shape(shape))
        limit = context_limit(config)
        if max(depths) + tokens_after > limit:
            raise SystemExit(f"--plan {item!r}: depth {max(depths)} + {tokens_after} tokens exceeds the shape's "
                             f"context of {limit} tokens ({context_note(config)}); use a shape whose RoPE scaling "
                             "reaches it, e.g. yarn-llama-2-7b-64k (Llama-2-7B, yarn x16), or smaller depths.")
        plan.append((shape, depths))
    return plan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plan", nargs="+", default=["llama-3.2-1b:512,2048,8192,32768", "yarn-llama-2-7b-64k:512,2048"],
                    help="shape:depth,depth,...")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--new_tokens", type=int, default=64)
    ap.add_argument("--kv_dtypes", nargs="+", default=["fp16"])
    ap.add_argument("--engines", nargs="+", default=["ours", "llama.cpp"], choices=["ours", "llama.cpp", "llama-server"],
                    help="llama.cpp: llama-bench; llama-server: llama.cpp through its server, for depths whose KV "
                    "cache llama-bench would need twice in memory")
    ap.add_argument("--llama_args", nargs="+", default=[""],
                    help='llama.cpp options for llama-bench and llama-server, one engine per string (default "": '
                    'their defaults), e.g. "-fa off -ub 128"')
    ap.add_argument("--llama_depth", nargs="+", choices=["prefill", "restore"], default=["prefill"],
                    help="how llama-server gets its cached depth, one engine per choice: prefill the tokens "
                    "(untimed; 2.5 hours or more at 32k on the Llama-2-7B layout here) or restore a state file of them "
                    "with zero keys and values (seconds; time per token does not depend on the values)")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "peers")
    ap.add_argument("--out", default=None, help="also append the JSON lines to this file (each sample as it is "
                    "measured, then the medians)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--shape", help=argparse.SUPPRESS)
    ap.add_argument("--depth", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--kv_dtype", default="fp16", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(ours_child(args)))
        return
    plan = parse_plan(args.plan, args.prompt + args.new_tokens)
    args.work.mkdir(parents=True, exist_ok=True)
    rows, table = [], []
    for shape, depths in plan:
        engines = [Ours(shape, d) for d in args.kv_dtypes] if "ours" in args.engines else []
        peers = [LlamaBench(shape, args.work, e) for e in args.llama_args if "llama.cpp" in args.engines] + [
            LlamaServerAtDepth(shape, args.work, e, how) for e in args.llama_args for how in args.llama_depth
            if "llama-server" in args.engines]
        for peer in peers:
            reason = peer.available()
            if reason:
                rows.append({"shape": shape, "engine": peer.name, "skipped": reason})
                print(json.dumps(rows[-1]), flush=True)
            else:
                peer.prepare()
                engines.append(peer)
        samples = {(e.name, d): [] for e in engines for d in depths}
        for r in range(args.rounds):
            for depth in depths:
                for e in engines[r % len(engines):] + engines[:r % len(engines)]:
                    samples[(e.name, depth)].append(e.measure(depth, args.prompt, args.new_tokens))
                    line = {"shape": shape, "engine": e.name, "depth": depth, "round": r,
                            "sample": samples[(e.name, depth)][-1]}
                    print(json.dumps(line), file=sys.stderr, flush=True)
                    append_jsonl(args.out, [line])                  # kept if a later (hours-long) test is stopped
        medians = {}
        for (name, depth), runs in samples.items():
            row = {"shape": shape, "engine": name, "depth": depth, "prompt": args.prompt, "new_tokens": args.new_tokens,
                   "threads": THREADS, "rounds": len(runs),
                   "prefill_tok_s": round(statistics.median(s["prefill_tok_s"] for s in runs), 2),
                   "decode_ms_per_token": round(statistics.median(s["decode_ms_per_token"] for s in runs), 2),
                   "samples": runs,
                   **{k: max(s[k] for s in runs) for k in ("peak_rss_bytes", "weights_bytes", "kv_bytes")}}
            medians[(name, depth)] = row
            rows.append(row)
            print(json.dumps(row), flush=True)
        for e in engines if len(depths) > 1 else []:
            first, last = medians[(e.name, depths[0])], medians[(e.name, depths[-1])]
            rows.append({"shape": shape, "engine": e.name,
                         "flatness": f"decode ms/token at {depths[-1]} over {depths[0]}",
                         "ratio": round(last["decode_ms_per_token"] / first["decode_ms_per_token"], 3)})
            print(json.dumps(rows[-1]), flush=True)
        table.append((shape, depths, engines, medians))
    append_jsonl(args.out, rows)
    mb = 2 ** 20
    print("\n| shape | depth | engine | prefill tok/s (512 more) | decode ms/token | peak RSS MB (weights + KV) |")
    print("|---|---|---|---|---|---|")
    for shape, depths, engines, medians in table:
        for depth in depths:
            for e in engines:
                m = medians[(e.name, depth)]
                print(f"| {shape} | {depth} | {e.name} | {m['prefill_tok_s']:.1f} | {m['decode_ms_per_token']:.1f} | "
                      f"{m['peak_rss_bytes'] / mb:.0f} ({m['weights_bytes'] / mb:.0f} + {m['kv_bytes'] / mb:.0f}) |")


if __name__ == "__main__":
    main()
