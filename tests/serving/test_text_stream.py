"""Token ids -> released text: equal to a whole decode, stop strings cut and never sent, partial characters held."""
from __future__ import annotations

import pytest

from edgeawq.checkpoints.tokenizer_files import load_tokenizer
from edgeawq.default_models import resolve
from edgeawq.serving.text_stream import TextStream, window_decoder


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(resolve(None))


def run(tok, ids, stop):
    s = TextStream(tok, stop)
    pieces = [s.push(t) for t in ids]
    if not s.stopped:
        pieces.append(s.finish())
    return "".join(pieces), s


def test_pieces_add_up_to_the_whole_decode(tok):
    ids = tok("The quick brown fox jumps over the lazy dog. Zürich, naïve café: 東京 🙂!")["input_ids"][1:]
    text, s = run(tok, ids, [])
    assert text == tok.decode(ids, skip_special_tokens=True) == s.text


@pytest.mark.parametrize("stop", [["lazy"], ["fox jumps"], ["x", "over the"], ["dog."]])
def test_stop_string_cuts_the_text_before_it(tok, stop):
    sentence = "The quick brown fox jumps over the lazy dog. And more words follow here."
    ids = tok(sentence)["input_ids"][1:]
    text, s = run(tok, ids, stop)
    whole = tok.decode(ids, skip_special_tokens=True)
    first = min(whole.find(x) for x in stop if x in whole)
    assert s.stopped and text == whole[:first]


def test_text_that_may_begin_a_stop_string_is_held_back(tok):
    s = TextStream(tok, ["brown cow"])
    released = "".join(s.push(t) for t in tok("The quick brown")["input_ids"][1:])
    assert "brown" not in released                      # could still become "brown cow"
    rest = "".join(s.push(t) for t in tok(" fox")["input_ids"][1:])
    assert (released + rest).endswith("brown fox") and not s.stopped


def test_a_split_multibyte_character_is_never_released_half(tok):
    ids = tok("🙂")["input_ids"][1:]
    s = TextStream(tok, [])
    pieces = [s.push(t) for t in ids]
    assert all("\ufffd" not in p for p in pieces) and "".join(pieces) + s.finish() == "🙂"


def test_the_window_decoder_gives_what_the_tokenizer_decode_gives(tok):
    ids = tok("Zürich , naïve  café: 東京 🙂! x  .")["input_ids"]            # with the begin-of-sequence token
    special = [tok.eos_token_id, *ids[3:9], tok.bos_token_id]
    decode = window_decoder(tok)
    for window in (ids, ids[1:], ids[2:5], ids[5:6], special, []):
        assert decode(window) == tok.decode(window, skip_special_tokens=True)


def test_a_tokenizer_that_cleans_up_spaces_decodes_through_transformers(tok):
    class Cleaning:                                 # what decode calls; the Rust path would skip the clean-up
        backend_tokenizer = tok.backend_tokenizer
        clean_up_tokenization_spaces = True

        def decode(self, ids, skip_special_tokens=False):
            return "cleaned"

    assert window_decoder(Cleaning())([5, 6]) == "cleaned"
