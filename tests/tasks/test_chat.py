"""`run_awq chat` through a pseudo-terminal: streamed replies, /reset, Ctrl-C stops a reply and the chat goes on,
/exit leaves; the history is trimmed to the context."""
from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import subprocess
import sys
import termios
import time

import pytest

from edgeawq.checkpoints.tokenizer_files import load_tokenizer
from edgeawq.cpu_backend import native_build
from edgeawq.default_models import resolve
from edgeawq.errors import UserError
from edgeawq.tasks.chat import fit_history

from ..conftest import rtn_default_checkpoint


def test_history_drops_the_oldest_turns_and_keeps_the_system_message():
    tok = load_tokenizer(resolve(None))
    messages = [{"role": "system", "content": "sys"}]
    for i in range(12):
        messages += [{"role": "user", "content": f"question {i} " * 8}, {"role": "assistant", "content": "answer " * 8}]
    messages.append({"role": "user", "content": "last"})
    kept, ids = fit_history(tok, messages, 120)
    assert len(ids) <= 120 and kept[0]["role"] == "system" and kept[-1]["content"] == "last"
    assert kept[1]["role"] == "user" and len(kept) < len(messages)
    assert kept[1:] == messages[len(messages) - len(kept) + 1:]                  # a suffix of whole turns
    with pytest.raises(UserError):
        fit_history(tok, [{"role": "user", "content": "long " * 500}], 120)


@pytest.mark.parametrize("args, words", [(["--target", "tt"], "native engine"), (["--top_p", "0"], "--top_p"),
                                         (["--max_new_tokens", "4000"], "--max_new_tokens")])
def test_bad_chat_flags_exit_2(cli, rtn_llama3, args, words):
    code, out, err = cli(["chat", "--model", str(rtn_llama3), *args])
    assert code == 2 and words in err and "Traceback" not in err


class Terminal:
    def __init__(self, args, env):
        self.master, slave = pty.openpty()
        # a new session whose controlling terminal is the pty: Ctrl-C there sends SIGINT as a user's terminal does
        self.proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True,
                                     preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
        os.close(slave)
        self.seen = b""

    def read_until(self, marker: bytes, timeout=120) -> bytes:
        end = time.time() + timeout
        start = len(self.seen)
        while marker not in self.seen[start:]:
            assert time.time() < end, self.seen[-2000:]
            ready, _, _ = select.select([self.master], [], [], 0.5)
            if ready:
                try:
                    self.seen += os.read(self.master, 4096)
                except OSError:
                    break
        return self.seen[start:]

    def send(self, text: bytes) -> None:
        os.write(self.master, text)


@pytest.mark.slow
@pytest.mark.skipif(native_build.unavailable_reason() is not None, reason="native engine unavailable")
def test_chat_in_a_terminal(tmp_path):
    ckpt = rtn_default_checkpoint("default-llama", 4, tmp_path)
    env = {**os.environ, "EDGEAWQ_CACHE": str(tmp_path / "cache")}
    t = Terminal([sys.executable, "-m", "edgeawq.cli", "chat", "--model", str(ckpt), "--temperature", "0",
                  "--max_new_tokens", "1500", "--max_seq_len", "2048"], env)
    try:
        t.read_until(b"> ")
        t.send(b"Tell me about the history of computers.\r")
        t.read_until(b"Tell me about the history of computers.")
        reply = t.read_until(b"\n", 60)                                   # the echo's end of line
        first = t.read_until(b" ", 60)                                    # the reply starts streaming
        t.send(b"\x03")                                                   # Ctrl-C stops it
        after = t.read_until(b"> ")
        assert b"[stopped]" in after
        assert t.proc.poll() is None                                      # still chatting
        t.send(b"/reset\r")
        assert b"forgotten" in t.read_until(b"> ")
        t.send(b"Hello\r")
        t.read_until(b"> ")                                               # a whole reply, then the prompt again
        t.send(b"/exit\r")
        assert t.proc.wait(60) == 0
        assert b"Traceback" not in t.seen and reply is not None and first
    finally:
        if t.proc.poll() is None:
            os.killpg(t.proc.pid, signal.SIGKILL)
