"""`run_awq`: the command-line entry point. Thin: parses flags and calls library code.

Problems the user can fix are printed as one paragraph with the fix and exit with status 2 (click's own flag
errors too); `--debug` shows the traceback instead.
"""
from __future__ import annotations

import os
import sys

import click

from .errors import UserError

TASKS = ("decode",)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--task", type=click.Choice(TASKS), required=True, help="What to do.")
@click.option("--model", "model_path", default=None,
              help="Checkpoint folder (Hugging Face or Meta format), or an embedded model alias: default, "
                   "default-llama, default-qwen2. Omitted: the embedded default model (default-llama).")
@click.option("--target", default="cpu", show_default=True, help="Execution backend (registry: cpu).")
@click.option("--dtype", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True,
              help="Weight and activation dtype of the float model.")
@click.option("--flash_attention", is_flag=True,
              help="Group q/k/v into one projection and gate/up into one, and run attention through the "
                   "project's SDPA path with a static KV cache allocated once for --max_seq_len.")
@click.option("--max_seq_len", type=click.IntRange(min=2), default=None,
              help="Context length (prompt + new tokens) to allocate. Default: min(model context, 2048).")
@click.option("--prompt", "prompts", multiple=True, help="A prompt; repeat for a batch (at most 32).")
@click.option("--prompts", "prompts_file", type=click.Path(dir_okay=False), default=None,
              help='Prompts file: JSON list of strings or {"prompt": ...} objects, or JSON Lines.')
@click.option("--max_new_tokens", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--temperature", type=float, default=0.0, show_default=True, help="0 = greedy.")
@click.option("--top_p", type=float, default=1.0, show_default=True, help="Nucleus sampling mass, in (0, 1].")
@click.option("--top_k", type=int, default=0, show_default=True, help="Keep the k most likely tokens; 0 = all.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the sampler.")
@click.option("--stop_at_eos/--ignore_eos", default=True, show_default=True,
              help="Stop a sequence when it produces an end-of-sequence token.")
@click.option("--instruct", is_flag=True, help="Wrap each prompt in the tokenizer's chat template.")
@click.option("--output", type=click.Path(dir_okay=False), default=None,
              help="Write results as JSON (prompt, completion, token counts, prefill and per-token ms).")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
def cli(task: str, model_path: str | None, target: str, dtype: str, flash_attention: bool,
        max_seq_len: int | None, prompts: tuple[str, ...], prompts_file: str | None, max_new_tokens: int,
        temperature: float, top_p: float, top_k: int, seed: int, stop_at_eos: bool, instruct: bool,
        output: str | None, debug: bool) -> None:
    """Quantize Llama-family models with AWQ and run them on CPU, NPU and Tenstorrent targets.

    \b
    Example:
      run_awq --task decode --prompt "The hacker ethic"
    """
    from .runtime.tasks import decode_task

    if task == "decode":
        decode_task(model_path=model_path, target=target, dtype=dtype, flash_attention=flash_attention,
                    max_seq_len=max_seq_len, prompts=list(prompts), prompts_file=prompts_file,
                    max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed,
                    stop_at_eos=stop_at_eos, instruct=instruct, output=output)


def main(argv: list[str] | None = None) -> None:
    # Everything loads from local paths: never reach for a model hub, and keep library chatter off stderr.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        cli.main(args=args, prog_name="run_awq", standalone_mode=False)
    except UserError as exc:
        if debug:
            raise
        click.echo(exc.paragraph(), err=True)
        sys.exit(2)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2 if isinstance(exc, click.UsageError) else exc.exit_code)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
