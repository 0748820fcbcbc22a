"""Serving under load: ours (`run_awq serve`) against llama.cpp's `llama-server` on the same shape, in one run.

Models (--models): `default` (the embedded default-llama's shape) and `llama-3.2-1b`; speed does not depend on the
weights' values, and llama.cpp's are random:
* ours: the embedded default-llama's own weights, or scripts/make_random_checkpoint.py's, with a placeholder
  tokenizer whose vocabulary covers every id ("<unk>", "<s>", "</s>", "t3" ... a tokenizers WordLevel file),
  quantized RTN w4 g128 with lm_head w4 g128; served by `run_awq serve --max_batch S --max_seq_len C --kv_dtype
  fp16` (native engine, paged KV; a 16-bit KV cache as llama-server's default f16 one; its defaults otherwise);
* llama.cpp: a Q4_0 GGUF of the shape with the same placeholder vocabulary (benchmarks/peers/gguf_q4_0.py),
  served by `llama-server -np S -c S*C -t 2` (built by scripts/build_llama_cpp.sh; or $LLAMA_SERVER, or on PATH).
Both servers run at once (one idles while the other is measured), bound to 127.0.0.1.

Load, per --clients count and server (the server order alternates per round): closed loop for --seconds; each client
streams /v1/completions requests one after another: prompt = --prompt_tokens random token ids (the same list per
cell, client and request index for both servers; no prompt repeats across cells, so llama-server's prompt cache
never skips a prefill), max_tokens --new_tokens, temperature 0, ignore_eos (both servers
generate exactly max_tokens). At the deadline clients hang up on requests still running (a disconnect, which
the servers must take in stride). Per run:
* requests/s (completed within the window), output tokens/s (every token streamed within the window / seconds);
* time to first token (request sent -> first token chunk) and inter-token latency (gaps between consecutive token
  chunks of a request; every placeholder token is visible text, so one chunk = one token): p50 / p95 / p99 ms;
* errors (non-200 answers, error events, broken streams before the deadline): the goal is 0;
* the server process's peak RSS (VmHWM, model loading included) and its RSS at the end of the run (VmRSS);
* ours: the prompt tokens per step its scheduler allowed last, and its fitted step cost (GET /health).
TTFT and ITL count what arrived within the window (a request still waiting for its first token at the deadline
adds no TTFT sample).
JSON lines on stdout (one per run, then ours/llama.cpp ratios per clients count: output tok/s and p99 inter-token
latency), a markdown table at the end; --out FILE appends the lines. Run it alone on the machine.

Usage: python benchmarks/serve_load.py [--models default llama-3.2-1b] [--clients 1 4 16] [--seconds 60]
       [--rounds 1] [--slots 16] [--work runs/serve_load] [--out F.jsonl]
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
THREADS = 2


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p95": None, "p99": None}
    v = sorted(values)
    pick = lambda q: round(v[min(len(v) - 1, int(q * len(v)))], 2)
    return {"p50": pick(0.50), "p95": pick(0.95), "p99": pick(0.99)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int, field: str = "VmHWM") -> float | None:
    """VmHWM (peak resident set, loading included) or VmRSS (now) of a process, MB."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    m = re.search(field + r":\s+(\d+) kB", text)
    return round(int(m.group(1)) / 1024, 1) if m else None


# ---- the models ----
def shape_config(model: str) -> dict:
    from edgeawq.default_models import DEFAULT_MODELS
    from edgeawq.runtime.random_model import read_shape

    return read_shape(str(DEFAULT_MODELS["default-llama"]) if model == "default" else model)


def placeholder_tokenizer(folder: Path, vocab: int) -> None:
    """Replace the folder's tokenizer with a WordLevel one of `vocab` tokens: "<unk>", "<s>", "</s>", "t3", ..."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"t{i}": i for i in range(3, vocab)}}
    tok = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                 "tokenizer.model"):
        (folder / name).unlink(missing_ok=True)
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                            pad_token="<unk>").save_pretrained(folder)


def our_checkpoint(model: str, work: Path) -> Path:
    out = work / f"{model}-w4g128"
    if (out / "manifest.json").exists():
        return out
    src = work / f"{model}-float"
    if not (src / "config.json").exists():
        if model == "default":                     # the embedded model's own weights: the same shape
            from edgeawq.default_models import DEFAULT_MODELS

            shutil.copytree(DEFAULT_MODELS["default-llama"], src, dirs_exist_ok=True)
        else:
            subprocess.run([sys.executable, str(ROOT / "scripts" / "make_random_checkpoint.py"), "--shape", model,
                            "--out", str(src)], check=True)
        placeholder_tokenizer(src, shape_config(model)["vocab_size"])
    subprocess.run([sys.executable, "-m", "edgeawq.cli", "quantize", "--model", str(src), "--out", str(out),
                    "--algorithm", "pergrp", "--w_bit", "4", "--group_size", "128", "--lm_head",
                    "--lm_head_group_size", "128"], check=True, stdout=subprocess.DEVNULL)
    return out


def llama_gguf(model: str, work: Path) -> Path:
    from peers.gguf_q4_0 import write_random_q4_0_gguf

    path = work / f"{model}-q4_0.gguf"
    if not path.exists():
        write_random_q4_0_gguf(shape_config(model), path)
    return path


# ---- the servers ----
class ServerProcess:
    def __init__(self, name: str, cmd: list[str], port: int | None, env: dict | None = None) -> None:
        self.name = name
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        self.port = port
        self.log: list[str] = []
        threading.Thread(target=self._drain, daemon=True).start()
        end = time.time() + 1800
        while not self.ready():
            if self.proc.poll() is not None or time.time() > end:
                raise RuntimeError(f"{name} did not start: {''.join(self.log[-20:])}")
            time.sleep(0.5)

    def _drain(self) -> None:
        for line in self.proc.stderr:
            self.log.append(line)
            m = re.search(r"http://127\.0\.0\.1:(\d+)/v1", line)
            if m and self.port is None:
                self.port = int(m.group(1))

    def ready(self) -> bool:
        if self.port is None:
            return False
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            conn.request("GET", "/health")
            ok = conn.getresponse().status == 200
            conn.close()
            return ok
        except OSError:
            return False

    def health(self) -> dict:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("GET", "/health")
            return json.loads(conn.getresponse().read())
        finally:
            conn.close()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def start_ours(ckpt: Path, slots: int, context: int, work: Path, threads: int | None,
               prefill_chunk: int | None, kv_dtype: str) -> ServerProcess:
    env = {**os.environ, "EDGEAWQ_CACHE": str(work / "cache")}
    extra = (["--threads", str(threads)] if threads else []) + (
        ["--prefill_chunk", str(prefill_chunk)] if prefill_chunk else []) + ["--kv_dtype", kv_dtype]
    return ServerProcess("ours", [sys.executable, "-m", "edgeawq.cli", "serve", "--model", str(ckpt), "--port", "0",
                                  "--max_batch", str(slots), "--max_seq_len", str(context), "--model_name", "m",
                                  "--max_queue", "256", *extra], None, env)


def llama_server_exe() -> str | None:
    for c in (os.environ.get("LLAMA_SERVER"), str(ROOT / ".peers/llama.cpp/bin/llama-server"),
              shutil.which("llama-server")):
        if c and Path(c).is_file():
            return c
    return None


def start_llama(exe: str, gguf: Path, slots: int, context: int) -> ServerProcess:
    port = free_port()
    return ServerProcess("llama.cpp", [exe, "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port),
                                       "-t", str(THREADS), "-tb", str(THREADS), "-np", str(slots),
                                       "-c", str(slots * context), "--no-webui"], port)


# ---- the load ----
class Client(threading.Thread):
    def __init__(self, index: int, port: int, deadline: float, prompt_tokens: int, new_tokens: int, vocab: int,
                 run: int) -> None:
        super().__init__(daemon=True)
        self.index, self.port, self.deadline, self.run_id = index, port, deadline, run
        self.prompt_tokens, self.new_tokens, self.vocab = prompt_tokens, new_tokens, vocab
        self.completed, self.tokens, self.errors = 0, 0, []
        self.ttft, self.itl = [], []

    def prompt(self, request: int) -> list[int]:
        rng = random.Random((self.run_id * 1009 + self.index) * 100003 + request)
        return [rng.randrange(3, self.vocab) for _ in range(self.prompt_tokens)]

    def run(self) -> None:
        request = 0
        while time.perf_counter() < self.deadline:
            self.one(self.prompt(request))
            request += 1

    def one(self, prompt: list[int]) -> None:
        body = json.dumps({"model": "m", "prompt": prompt, "max_tokens": self.new_tokens, "temperature": 0,
                           "stream": True, "ignore_eos": True}).encode()
        sent = time.perf_counter()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
            conn.request("POST", "/v1/completions", body=body, headers={"content-type": "application/json"})
            conn.sock.settimeout(max(0.05, self.deadline - time.perf_counter()))
            resp = conn.getresponse()
            if resp.status != 200:
                self.errors.append(f"HTTP {resp.status}: {resp.read()[:200]!r}")
                return
            last, got, finished = None, 0, False
            while True:
                line = resp.readline()
                if not line:
                    break
                if not line.startswith(b"data: "):
                    continue
                data = line[6:].strip()
                if data == b"[DONE]":
                    finished = True
                    break
                event = json.loads(data)
                if "error" in event:
                    self.errors.append(str(event["error"])[:200])
                    return
                choices = event.get("choices") or []
                if choices and choices[0].get("text"):
                    now = time.perf_counter()
                    if now > self.deadline:
                        break
                    if last is None:
                        self.ttft.append((now - sent) * 1e3)
                    else:
                        self.itl.append((now - last) * 1e3)
                    last, got = now, got + 1
                    self.tokens += 1
            if finished:
                self.completed += 1
            elif time.perf_counter() < self.deadline:
                self.errors.append(f"stream ended after {got} tokens")
        except (socket.timeout, TimeoutError):
            pass                                           # the deadline: hang up on the running request
        except OSError as exc:
            if time.perf_counter() < self.deadline:
                self.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            conn.close()


def warm(port: int, vocab: int) -> None:
    c = Client(0, port, time.perf_counter() + 600, 16, 4, vocab, 999)
    c.one(c.prompt(999))
    if c.errors:
        raise RuntimeError(f"warm-up failed: {c.errors}")


def run_load(server: ServerProcess, clients: int, seconds: float, prompt_tokens: int, new_tokens: int,
             vocab: int, run: int) -> dict:
    """One load run; `run` numbers the (round, clients) cell: its prompts are its own, the same for both servers
    (a prompt seen in an earlier cell would let llama-server reuse its cached prefill; ours has no prompt cache)."""
    start = time.perf_counter()
    threads = [Client(i, server.port, start + seconds, prompt_tokens, new_tokens, vocab, run)
               for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    errors = [e for t in threads for e in t.errors]
    return {"requests_per_s": round(sum(t.completed for t in threads) / seconds, 3),
            "output_tok_s": round(sum(t.tokens for t in threads) / seconds, 2),
            "requests": sum(t.completed for t in threads),
            "ttft_ms": percentiles([x for t in threads for x in t.ttft]),
            "itl_ms": percentiles([x for t in threads for x in t.itl]),
            "errors": len(errors), "error_samples": errors[:3], "peak_rss_mb": rss_mb(server.proc.pid),
            "rss_mb": rss_mb(server.proc.pid, "VmRSS")}


def step_costs(server: ServerProcess) -> dict:
    """Our scheduler's prompt tokens per step and its fitted step cost (serving/step_cost.py) after a run."""
    h = server.health()
    return {k: h.get(k) for k in ("prompt_tokens_per_step", "step_fixed_ms", "step_per_token_ms")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["default", "llama-3.2-1b"])
    ap.add_argument("--clients", nargs="+", type=int, default=[1, 4, 16])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--slots", type=int, default=16)
    ap.add_argument("--context", type=int, default=512, help="tokens per sequence (both servers)")
    ap.add_argument("--prompt_tokens", type=int, default=128)
    ap.add_argument("--new_tokens", type=int, default=64)
    ap.add_argument("--servers", nargs="+", default=["ours", "llama.cpp"], choices=["ours", "llama.cpp"])
    ap.add_argument("--our_threads", type=int, default=None,
                    help="run_awq serve --threads (default: its own, all cores)")
    ap.add_argument("--our_prefill_chunk", type=int, default=None,
                    help="run_awq serve --prefill_chunk (default: its own)")
    ap.add_argument("--our_kv_dtype", default="fp16", choices=["fp32", "bf16", "fp16", "int8"],
                    help="run_awq serve --kv_dtype (default fp16: llama-server's default KV cache type, f16)")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "serve_load")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if not (1 <= args.seconds <= 600 and max(args.clients) <= 64 and args.rounds <= 10):
        sys.exit("--seconds at most 600, --clients at most 64, --rounds at most 10 (the load is bounded)")
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []

    def emit(row: dict) -> None:
        print(json.dumps(row), flush=True)
        rows.append(row)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")

    exe = llama_server_exe()
    for model in args.models:
        vocab = shape_config(model)["vocab_size"]
        servers = {}
        try:
            if "ours" in args.servers:
                servers["ours"] = start_ours(our_checkpoint(model, args.work), args.slots, args.context, args.work,
                                             args.our_threads, args.our_prefill_chunk, args.our_kv_dtype)
            if "llama.cpp" in args.servers:
                if exe is None:
                    emit({"model": model, "server": "llama.cpp",
                          "skipped": "llama-server not found (bash scripts/build_llama_cpp.sh builds it)"})
                else:
                    servers["llama.cpp"] = start_llama(exe, llama_gguf(model, args.work), args.slots, args.context)
            for s in servers.values():
                warm(s.port, vocab)
            for rnd in range(args.rounds):
                for clients in args.clients:
                    order = list(servers.values())
                    if (rnd + args.clients.index(clients)) % 2:
                        order.reverse()
                    for s in order:
                        emit({"model": model, "server": s.name, "clients": clients, "round": rnd,
                              "seconds": args.seconds, "prompt_tokens": args.prompt_tokens,
                              "new_tokens": args.new_tokens, "slots": args.slots,
                              **({"threads": args.our_threads, "prefill_chunk": args.our_prefill_chunk,
                                  "kv_dtype": args.our_kv_dtype}
                                 if s.name == "ours" else {}),
                              **run_load(s, clients, args.seconds, args.prompt_tokens, args.new_tokens, vocab,
                                         rnd * len(args.clients) + args.clients.index(clients)),
                              **(step_costs(s) if s.name == "ours" else {})})
        finally:
            for s in servers.values():
                s.stop()
    summarize(rows, emit)


def summarize(rows: list[dict], emit) -> None:
    runs = [r for r in rows if "output_tok_s" in r]
    keys = sorted({(r["model"], r["clients"]) for r in runs}, key=lambda k: (k[0], k[1]))
    table = ["| model | clients | server | req/s | out tok/s | TTFT p50/p99 ms | ITL p50/p95/p99 ms | errors | "
             "RSS / peak MB |", "|---|---|---|---|---|---|---|---|---|"]
    for model, clients in keys:
        per = {}
        for server in ("ours", "llama.cpp"):
            mine = [r for r in runs if (r["model"], r["clients"], r["server"]) == (model, clients, server)]
            if not mine:
                continue
            tok = round(statistics.median(r["output_tok_s"] for r in mine), 2)
            p99 = statistics.median(r["itl_ms"]["p99"] or 0 for r in mine)
            per[server] = (tok, p99)
            r = mine[0]
            req_s = round(statistics.median(x["requests_per_s"] for x in mine), 3)
            table.append(f"| {model} | {clients} | {server} | {req_s} "
                         f"| {tok} | {r['ttft_ms']['p50']} / {r['ttft_ms']['p99']} | {r['itl_ms']['p50']} / "
                         f"{r['itl_ms']['p95']} / {r['itl_ms']['p99']} | {sum(x['errors'] for x in mine)} | "
                         f"{r['rss_mb']} / {r['peak_rss_mb']} |")
        if len(per) == 2 and per["llama.cpp"][0] and per["llama.cpp"][1]:
            emit({"model": model, "clients": clients, "ratio": "ours / llama.cpp",
                  "output_tok_s": round(per["ours"][0] / per["llama.cpp"][0], 3),
                  "itl_p99": round(per["ours"][1] / per["llama.cpp"][1], 3)})
    print("\n".join(table))


if __name__ == "__main__":
    main()
