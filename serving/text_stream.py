"""Generated token ids -> text pieces as they become final, with stop strings.

`TextStream.push(token_id)` returns the text that is now certain: a piece is held back while it ends inside a
multi-byte character (the tokenizer decodes it to U+FFFD) or while its end could still grow into a stop string. When
a stop string appears, the text before it is the rest of the output and `stopped` is set; the stop string itself is
never sent (OpenAI's behaviour).

Decoding is incremental (the window method of text-generation-inference / vLLM): only the ids after `prefix` are
decoded, so a token costs O(window), not O(length); decoding the window with the token before it keeps the spaces
that sentencepiece tokenizers attach to a token's start. Windows are decoded by the Rust tokenizer itself when that
gives what `tokenizer.decode(ids, skip_special_tokens=True)` gives (a fast tokenizer that does not clean up spaces):
a server decodes two windows per token of every running request, and transformers' per-call wrapping cost more
than the decode.
"""
from __future__ import annotations

from typing import Callable


def window_decoder(tokenizer) -> Callable[[list[int]], str]:
    """ids -> tokenizer.decode(ids, skip_special_tokens=True), by the fastest path that gives the same text."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or getattr(tokenizer, "clean_up_tokenization_spaces", False):
        return lambda ids: tokenizer.decode(ids, skip_special_tokens=True)
    return lambda ids: backend.decode(ids, skip_special_tokens=True)


class TextStream:
    def __init__(self, tokenizer, stop: list[str]) -> None:
        self.decode, self.stop = window_decoder(tokenizer), stop
        self.ids: list[int] = []
        self.prefix = 0             # ids[prefix:read] decode to text already taken into `pending` / `sent`
        self.read = 0
        self.pending = ""           # final text not yet released (a possible stop-string start)
        self.text = ""              # all text released so far
        self.stopped = False

    def push(self, token_id: int) -> str:
        """Add one generated token -> the text released by it ("" while held back)."""
        if self.stopped:
            return ""
        self.ids.append(token_id)
        before = self.decode(self.ids[self.prefix:self.read])
        now = self.decode(self.ids[self.prefix:])
        if now.endswith("\ufffd") or len(now) <= len(before):
            return ""                                   # an unfinished character, or nothing visible yet
        self.pending += now[len(before):]
        self.prefix, self.read = self.read, len(self.ids)
        return self._release()

    def finish(self) -> str:
        """The sequence ended (length or end of sequence): the held-back text, and any unfinished bytes."""
        if self.stopped:
            return ""
        tail = self.decode(self.ids[self.prefix:])
        head = self.decode(self.ids[self.prefix:self.read])
        self.pending += tail[len(head):]
        out, self.pending = self.pending, ""
        self.text += out
        return out

    def _release(self) -> str:
        for s in self.stop:                              # the earliest stop string in the text not yet released
            at = (self.text[-(len(s) - 1):] if len(s) > 1 else "") + self.pending
            hit = at.find(s)
            if hit >= 0:
                keep = hit - (len(at) - len(self.pending))   # may be negative: the match began in released text
                out = self.pending[:max(keep, 0)]
                self.text += out
                self.pending, self.stopped = "", True
                return out
        hold = max((self._overlap(s) for s in self.stop), default=0)
        out = self.pending[:len(self.pending) - hold]
        self.pending = self.pending[len(out):]
        self.text += out
        return out

    def _overlap(self, stop: str) -> int:
        """Characters at the end of `pending` that begin `stop` (the longest such suffix)."""
        for n in range(min(len(stop) - 1, len(self.pending)), 0, -1):
            if stop.startswith(self.pending[-n:]):
                return n
        return 0
