"""Atomic writes: all or nothing, one writer at a time, dead writers' temporaries cleaned by the next write."""
from __future__ import annotations

import os
import threading
import time

import pytest

from edgeawq.checkpoints import atomic
from edgeawq.checkpoints.atomic import atomic_directory, write_text_atomic
from edgeawq.errors import UserError


def siblings(path):
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.name)


def write_folder(dest, text, **kwargs):
    with atomic_directory(dest, **kwargs) as tmp:
        (tmp / "a.txt").write_text(text)


@pytest.mark.parametrize("exchange", [True, False])
def test_replaces_the_old_folder_only_when_complete(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)      # filesystems without renameat2
    dest = tmp_path / "out"
    write_folder(dest, "old")
    with pytest.raises(RuntimeError):
        with atomic_directory(dest) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("interrupted")
    assert (dest / "a.txt").read_text() == "old" and siblings(dest) == []
    write_folder(dest, "new")
    assert (dest / "a.txt").read_text() == "new" and siblings(dest) == [] and os.listdir(dest) == ["a.txt"]


def test_dead_writers_temporaries_are_removed_and_a_half_swap_is_undone(tmp_path):
    dest = tmp_path / "out"
    (tmp_path / ".out.tmp-abcd1234").mkdir()                  # a writer killed while writing
    (tmp_path / ".out.tmp-abcd1234" / "shard").write_bytes(b"x" * 100)
    (tmp_path / ".out.old-zzzz9999").mkdir()                  # a writer killed between the two renames of a swap
    (tmp_path / ".out.old-zzzz9999" / "a.txt").write_text("old")
    (tmp_path / ".outer.tmp-abcd1234").mkdir()                # another output's temporary is not touched
    with pytest.raises(RuntimeError):
        with atomic_directory(dest):
            raise RuntimeError("fails before completing")
    assert (dest / "a.txt").read_text() == "old"              # the old artefact is back in place
    assert siblings(dest) == [".outer.tmp-abcd1234"]


def test_a_second_writer_is_refused_while_the_first_lives(tmp_path):
    dest = tmp_path / "out"
    with atomic_directory(dest) as tmp:
        (tmp / "a.txt").write_text("first")
        with pytest.raises(UserError, match="Another run is writing .*out right now"):
            write_folder(dest, "second")
    assert (dest / "a.txt").read_text() == "first" and siblings(dest) == []


def test_a_cache_writer_waits_for_the_other_one(tmp_path):
    dest = tmp_path / "cache"
    done = []
    with atomic_directory(dest) as tmp:
        (tmp / "a.txt").write_text("first")
        t = threading.Thread(target=lambda: (write_folder(dest, "second", wait=True), done.append(1)))
        t.start()
        time.sleep(0.3)
        assert not done                                        # still waiting
    t.join(10)
    assert done and (dest / "a.txt").read_text() == "second" and siblings(dest) == []


def test_errors_of_the_final_step_propagate(tmp_path, monkeypatch):
    dest = tmp_path / "out"
    write_folder(dest, "old")

    def broken(*args):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(atomic, "_install", broken)
    with pytest.raises(OSError, match="Input/output error"):
        write_folder(dest, "new")
    assert (dest / "a.txt").read_text() == "old" and siblings(dest) == []


def test_a_file_write_replaces_the_file_atomically(tmp_path):
    dest = tmp_path / "r.json"
    write_text_atomic(dest, "one")
    write_text_atomic(dest, "two")
    assert dest.read_text() == "two" and siblings(dest) == []
