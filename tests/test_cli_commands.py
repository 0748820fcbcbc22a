"""The subcommand layout of `run_awq`: help and examples, the --task alias, flags per subcommand, completion, and
that help answers without importing torch or transformers."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from edgeawq.cli import TASKS
from edgeawq.cli import cli as group

SUBCOMMANDS = sorted(TASKS)


def test_help_lists_every_subcommand(cli):
    code, out, _ = cli(["--help"])
    assert code == 0 and sorted(group.commands) == SUBCOMMANDS
    for name in SUBCOMMANDS:
        assert f"\n  {name} " in out, out


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_subcommand_has_help_with_an_example(name, cli):
    code, out, _ = cli([name, "--help"])
    assert code == 0 and "Example:" in out and f"run_awq {name} " in out and "--debug" in out


@pytest.mark.parametrize("args,owner", [
    (["decode", "--w_bit", "4"], "benchmark, benchmark_long, quantize"),
    (["quantize", "--prompt", "x", "--out", "o"], "decode"),
    (["perplexity", "--out", "o"], "export, quantize"),
    (["export", "--engine", "native"], "accuracy, benchmark"),
    (["--task", "decode", "--group_size", "32"], "quantize"),
])
def test_a_flag_of_another_subcommand_is_an_error_naming_it(args, owner, cli):
    code, _, err = cli(args)
    assert code == 2 and err.startswith("Error: ") and "is not a flag of `run_awq" in err and owner in err, err
    assert err.strip().count("\n") == 0


def test_benchmark_quantization_flags_need_random_weights(cli):
    code, _, err = cli(["benchmark", "--w_bit", "3"])
    assert code == 2 and "--random_weights" in err


def test_task_alias(cli):
    code, _, err = cli(["--task", "bogus"])
    assert code == 2 and "'bogus' is not a task" in err
    assert cli(["--task", "decode", "--help"])[1] == cli(["decode", "--help"])[1]
    assert cli(["--task=quantize", "--help"])[1] == cli(["quantize", "--help"])[1]


def test_help_and_flag_errors_do_not_import_torch_or_transformers():
    code = ("import sys\nfrom edgeawq.cli import main\n"
            "for args in (['--help'], ['decode', '--help'], ['decode', '--w_bit', '4']):\n"
            "    try:\n        main(args)\n    except SystemExit:\n        pass\n"
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout + proc.stderr


def test_shell_completion_through_click():
    script = os.path.join(os.path.dirname(sys.executable), "run_awq")
    env = {**os.environ, "_RUN_AWQ_COMPLETE": "bash_complete", "COMP_WORDS": "run_awq qua", "COMP_CWORD": "1"}
    proc = subprocess.run([script], env=env, capture_output=True, text=True)
    assert proc.returncode == 0 and "quantize" in proc.stdout, proc.stdout + proc.stderr
    env.update(COMP_WORDS="run_awq decode --max_n", COMP_CWORD="2")
    proc = subprocess.run([script], env=env, capture_output=True, text=True)
    assert "--max_new_tokens" in proc.stdout
