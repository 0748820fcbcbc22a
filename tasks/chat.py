"""`run_awq chat`: an interactive terminal chat on the native engine (a one-row scheduler, serving/scheduler.py).

The conversation is re-encoded with the chat template at every turn; when it no longer fits the context with room
for --max_new_tokens, the oldest turns are dropped (the system message stays). Replies stream as they are made.
Ctrl-C during a reply stops it (what was said stays in the history); at the prompt it only clears the line.
/reset forgets the conversation; /exit or Ctrl-D leaves.
"""
from __future__ import annotations

import queue
import secrets
import sys

from ..errors import UserError
from ..runtime.backends import EngineOptions
from ..runtime.sampling import SamplingConfig
from .serve import serving_model

HELP = "/reset forgets the conversation, /exit or Ctrl-D leaves, Ctrl-C stops a reply"


def fit_history(tokenizer, messages: list[dict], room: int) -> tuple[list[dict], list[int]]:
    """Drop the oldest turns (never a leading system message, never the last message) until the templated
    conversation takes at most `room` tokens -> (messages kept, their prompt ids); a last message that alone does
    not fit -> UserError."""
    keep = list(messages)
    while True:
        text = tokenizer.apply_chat_template(keep, add_generation_prompt=True, tokenize=False)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= room:
            return keep, ids
        first = 1 if keep[0]["role"] == "system" else 0
        if len(keep) - first <= 1:
            raise UserError(f"The message is {len(ids)} tokens with the template; the context leaves room for "
                            f"{room}.", "Send a shorter message, or restart with a larger --max_seq_len.")
        del keep[first]
        while len(keep) - first > 1 and keep[first]["role"] != "user":   # a turn starts with the user
            del keep[first]


def chat_task(target: str, model_path: str | None, options: EngineOptions, dtype: str, max_seq_len: int | None,
              max_new_tokens: int, temperature: float, top_p: float, top_k: int, seed: int | None,
              system: str | None) -> None:
    from ..serving.scheduler import Ticket
    from ..serving.text_stream import TextStream

    SamplingConfig(temperature, top_p, top_k, seed or 0).validate()
    model, scheduler = serving_model(model_path, options, dtype, max_seq_len, 1, 1, target)
    tokenizer = model.tokenizer
    if not getattr(tokenizer, "chat_template", None):
        scheduler.close()
        raise UserError(f"The model {model.loaded.source.name} has no chat template.",
                        "Chat with an instruction-tuned checkpoint, or use `run_awq decode` for plain text.")
    if max_new_tokens >= scheduler.context:
        scheduler.close()
        raise UserError(f"--max_new_tokens {max_new_tokens} leaves no room for a message in the context of "
                        f"{scheduler.context} tokens.", "Lower --max_new_tokens or raise --max_seq_len.")
    base = [{"role": "system", "content": system}] if system else []
    history = list(base)
    turn = 0
    print(f"chat with {model.loaded.source.name} ({model.engine.name}, context {scheduler.context}); {HELP}",
          file=sys.stderr, flush=True)
    try:
        while True:
            try:
                line = input("> ")
            except KeyboardInterrupt:
                print(f"\n({HELP})", file=sys.stderr)
                continue
            except EOFError:
                print(file=sys.stderr)
                break
            text = line.strip()
            if text == "/exit":
                break
            if text == "/reset":
                history = list(base)
                print("(conversation forgotten)", file=sys.stderr)
                continue
            if not text:
                continue
            try:
                history, prompt = fit_history(tokenizer, history + [{"role": "user", "content": line}],
                                              scheduler.context - max_new_tokens)
            except UserError as exc:
                print(exc.paragraph(), file=sys.stderr)
                continue
            turn += 1
            events: queue.Queue = queue.Queue()
            sampling = SamplingConfig(temperature, top_p, top_k, (seed + turn) % 2**64 if seed is not None
                                      else secrets.randbits(63))
            ticket = scheduler.submit(Ticket(prompt, max_new_tokens, sampling, TextStream(tokenizer, []),
                                             events.put))
            reply = []
            try:
                while True:
                    try:
                        event = events.get(timeout=0.1)
                    except queue.Empty:
                        continue
                    if event[0] == "text":
                        reply.append(event[1])
                        sys.stdout.write(event[1])
                        sys.stdout.flush()
                    elif event[0] == "done":
                        break
                    else:
                        print(f"\n[error: {event[1]}]", file=sys.stderr)
                        break
            except KeyboardInterrupt:
                scheduler.cancel(ticket)
                print("\n[stopped]", file=sys.stderr, end="")
            sys.stdout.write("\n")
            sys.stdout.flush()
            history.append({"role": "assistant", "content": "".join(reply)})
    finally:
        scheduler.close()
