"""`run_awq serve` as a user runs it: flags refused with exit 2 before anything loads, and a real server process
that answers the openai client and stops cleanly on Ctrl-C."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from edgeawq.cpu_backend import native_build

openai = pytest.importorskip("openai")


@pytest.mark.parametrize("args, words", [
    (["--target", "npu"], "native engine"),
    (["--engine", "torch"], "native engine"),
    (["--max_batch", "0"], "--max_batch"),
    (["--max_queue", "-1"], "--max_queue"),
    (["--port", "70000"], "--port"),
    (["--api_key", " "], "--api_key"),
    (["--threads", "0"], "--threads"),
    (["--max_new_tokens", "5"], "flag of"),
])
def test_bad_flags_exit_2_with_a_paragraph(cli, rtn_llama3, args, words):
    code, out, err = cli(["serve", "--model", str(rtn_llama3), *args])
    assert code == 2 and words in err and "Traceback" not in err


def test_a_taken_port_is_a_clear_error(cli, rtn_llama3):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        code, out, err = cli(["serve", "--model", str(rtn_llama3), "--port", str(busy.getsockname()[1])])
    assert code == 2 and "cannot listen" in err and "--port" in err


@pytest.mark.skipif(native_build.unavailable_reason() is not None, reason="native engine unavailable")
def test_serve_process_answers_and_stops_on_ctrl_c(rtn_llama3, tmp_path):
    env = {**os.environ, "EDGEAWQ_CACHE": str(tmp_path / "cache"), "EDGEAWQ_API_KEY": "k"}
    proc = subprocess.Popen([sys.executable, "-m", "edgeawq.cli", "serve", "--model", str(rtn_llama3), "--port", "0",
                             "--max_seq_len", "256", "--model_name", "tiny"],
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stderr.readline()
        while line and not line.startswith("serving "):                # the native build's notes come first
            line = proc.stderr.readline()
        port = int(re.search(r"http://127\.0\.0\.1:(\d+)/v1", line).group(1))
        assert "API key required" in line
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0)
        out = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=5)
        assert out.usage.completion_tokens <= 5 and out.choices[0].finish_reason in ("stop", "length")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 130                                       # the shell's code for Ctrl-C
        rest = proc.stderr.read()
        assert "Interrupted" in rest and "Traceback" not in rest, rest
    finally:
        if proc.poll() is None:
            proc.kill()
