"""--out of quantize and export replaces only an earlier artefact of this tool: every protected place is refused
(exit 2, one paragraph) and nothing that was there is lost."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from edgeawq.default_models import DEFAULT_MODELS


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def place(tmp_path, monkeypatch):
    """A working folder with a source model, a folder of user files and a user file; cwd is the working folder."""
    root = tmp_path / "work"
    (root / "models").mkdir(parents=True)
    shutil.copytree(DEFAULT_MODELS["default-llama"], root / "models" / "m")
    (root / "models" / "notes.txt").write_text("beside the model")
    (root / "user").mkdir()
    (root / "user" / "thesis.tex").write_text("years of work")
    (root / "file.txt").write_text("a user's file")
    monkeypatch.chdir(root)
    return root


QUANTIZE = ["--task", "quantize", "--model", "models/m", "--algorithm", "pergrp"]


@pytest.mark.parametrize("out,needle", [
    ("user", "not an earlier checkpoint of this tool (it has no readable manifest.json)"),
    ("models", "contains the source model"),
    ("models/m", "is the source model"),
    (".", "is the current folder"),
    ("", "--out is empty"),
    ("file.txt", "is a file, not a folder"),
    ("/", "is the filesystem root"),
    ("~", "is a home folder"),
])
def test_quantize_refuses_to_replace_what_is_not_its_own(place, cli, out, needle):
    before = snapshot(place)
    code, _, err = cli(QUANTIZE + ["--out", out])
    assert code == 2 and "Traceback" not in err and err.startswith("Error: ") and err.strip().count("\n") == 0
    assert needle in err, err
    assert snapshot(place) == before and sorted(os.listdir(place)) == ["file.txt", "models", "user"]


def test_overwrite_replaces_a_user_folder_but_never_a_file_or_a_protected_place(place, cli):
    for out, needle in (("file.txt", "is a file"), (".", "current folder"), ("models", "source model")):
        code, _, err = cli(QUANTIZE + ["--out", out, "--overwrite"])
        assert code == 2 and needle in err
    assert (place / "file.txt").read_text() == "a user's file"
    code, _, err = cli(QUANTIZE + ["--out", "user", "--overwrite"])
    assert code == 0, err
    assert (place / "user" / "manifest.json").is_file() and not (place / "user" / "thesis.tex").exists()


def test_a_symbolic_link_is_refused(place, cli):
    (place / "link").symlink_to(place / "user")
    code, _, err = cli(QUANTIZE + ["--out", "link", "--overwrite"])
    assert code == 2 and "symbolic link" in err and (place / "user" / "thesis.tex").exists()


def test_an_earlier_checkpoint_is_replaced_but_not_with_a_users_file_beside_it(place, cli):
    assert cli(QUANTIZE + ["--out", "q"])[0] == 0
    assert cli(QUANTIZE + ["--out", "q", "--w_bit", "3"])[0] == 0       # replaced: its own artefact
    assert '"bits": 3' in (place / "q" / "config.json").read_text()
    (place / "q" / "my-notes.md").write_text("mine")
    code, _, err = cli(QUANTIZE + ["--out", "q"])
    assert code == 2 and "my-notes.md" in err and (place / "q" / "my-notes.md").read_text() == "mine"
    assert sorted(p for p in os.listdir(place) if p.startswith(".")) == []       # no temporaries left behind


def test_export_obeys_the_same_rules(place, cli):
    assert cli(QUANTIZE + ["--out", "q"])[0] == 0
    before = snapshot(place)
    for out, needle in (("user", "not an earlier export of this tool"), (".", "current folder"),
                        ("q", "is the source model"), ("file.txt", "is a file")):
        code, _, err = cli(["--task", "export", "--target", "npu", "--model", "q", "--out", out])
        assert code == 2 and needle in err, err
    assert snapshot(place) == before
    # a checkpoint is not an export: replacing one needs --overwrite
    code, _, err = cli(["--task", "export", "--target", "npu", "--model", "q", "--out", "onnx"])
    assert code == 0, err
    code, _, err = cli(["--task", "export", "--target", "npu", "--model", "q", "--out", "onnx"])
    assert code == 0, err                                                        # its own earlier export
    (place / "onnx" / "keep.txt").write_text("x")
    code, _, err = cli(["--task", "export", "--target", "npu", "--model", "q", "--out", "onnx"])
    assert code == 2 and "keep.txt" in err


def test_result_files_replace_only_earlier_results(place, cli):
    decode = ["--task", "decode", "--model", "models/m", "--prompt", "x", "--max_new_tokens", "2", "--engine",
              "torch"]
    for flag_value, needle in (("user", "is a directory"), ("file.txt", "is not an earlier decode result")):
        code, _, err = cli(decode + ["--output", flag_value])
        assert code == 2 and needle in err, err
    assert (place / "file.txt").read_text() == "a user's file"
    assert cli(decode + ["--output", "r.json"])[0] == 0
    assert cli(decode + ["--output", "r.json"])[0] == 0                 # its own earlier result
    assert cli(decode + ["--output", "file.txt", "--overwrite"])[0] == 0
    assert '"format": "edgeawq-decode"' in (place / "file.txt").read_text()
    bench = ["--task", "benchmark", "--model", "models/m", "--prompt_lengths", "4", "--new_tokens", "2",
             "--repeats", "1", "--engine", "torch"]
    code, _, err = cli(bench + ["--profile", "r.json"])
    assert code == 2 and "is not an earlier profile" in err
    code, _, err = cli(["--task", "quantize", "--model", "models/m", "--out", "q2", "--dump_awq", "r.json"])
    assert code == 2 and "is not an earlier AWQ cache" in err and not (place / "q2").exists()
