"""`run_awq`: the command-line entry point, a click group of subcommands. Thin: parses flags, calls library code.

`run_awq SUBCOMMAND [flags]`; each subcommand takes only its own flags (cli_options.py). `run_awq --task X ...` is
the same as `run_awq X ...` (the older form). A flag the subcommand does not take is an error naming the
subcommands that take it. Problems the user can fix are printed as one paragraph with the fix and exit with status
2 (click's own flag errors too); `--debug` shows the traceback instead. Ctrl-C exits with 130. Heavy libraries
(torch, transformers) are imported only once a subcommand runs, so `--help` and flag errors answer at once.
Shell completion: `eval "$(_RUN_AWQ_COMPLETE=bash_source run_awq)"` (zsh_source, fish_source for other shells).
"""
from __future__ import annotations

import os
import sys

import click

from .cli_options import (awq_options, benchmark_options, dataset_option, debug_option, float_model_option,
                          format_option, generation_options, mesh_options, model_option, overwrite_option, run_options,
                          weight_spec_options)
from .errors import UserError

TASKS = ("quantize", "export", "decode", "serve", "chat", "benchmark", "benchmark_long", "perplexity", "accuracy")
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


class Subcommand(click.Command):
    """A subcommand whose unknown flags are named with the subcommands that do take them."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as exc:
            owners = [name for name, cmd in sorted(cli.commands.items())
                      if any(exc.option_name in p.opts or exc.option_name in p.secondary_opts for p in cmd.params)]
            if not owners:
                raise
            raise UserError(f"{exc.option_name} is not a flag of `run_awq {self.name}`; it is a flag of "
                            f"{', '.join(owners)}.", f"Drop it, or run the subcommand that takes it "
                            f"(`run_awq {self.name} --help` lists the flags of {self.name}).") from None


def _prepare_libraries() -> None:
    """Keep library chatter off the user's terminal (imports transformers: call only when a subcommand runs)."""
    import transformers

    transformers.logging.set_verbosity_error()


def _engine_options(target: str, engine: str, ep, strict_ep: bool, onnx_dir, accuracy_level: int, tt_precision: str,
                    tt_device: str, prefill_chunk: int | None, kv_block_size: int | None, kv_max_blocks: int | None,
                    kv_dtype: str, kv_scales: str = "per_token", flash_attention: bool = False, **_ignored):
    from pathlib import Path

    from .runtime.backends import EngineOptions
    from .runtime.chunked_prefill import check_prefill_chunk

    return EngineOptions(engine=engine, ep=ep, strict_ep=strict_ep, onnx_dir=Path(onnx_dir) if onnx_dir else None,
                         accuracy_level=accuracy_level, tt_precision=tt_precision, tt_device=tt_device,
                         flash_attention=flash_attention, prefill_chunk=check_prefill_chunk(prefill_chunk),
                         kv_block_size=kv_block_size, kv_max_blocks=kv_max_blocks, kv_dtype=kv_dtype,
                         kv_scales=kv_scales)


def _run_task(task: str, kwargs: dict, mesh_shape: str, pp: int, tt_mesh: str | None, threads_per_rank,
              collective_timeout: float, debug: bool) -> None:
    """Call `task` ("module:function") with `kwargs` in this process, or on the mesh when one is asked for (after
    checking the mesh and the flags against the model's config, before any rank starts)."""
    from .scale_out.launcher import call_task
    from .scale_out.partition import resolve_mesh

    mesh = resolve_mesh(mesh_shape, pp, tt_mesh, kwargs["target"])
    if mesh.single:
        call_task(task, kwargs)
        return
    from dataclasses import replace

    from .scale_out.launcher import RunSettings, default_threads, run, under_torchrun
    from .scale_out.rank_model import RANDOM_WEIGHTS_ON_MESH, check_run_flags, mesh_plan_for

    if kwargs.get("random_spec") is not None:
        raise RANDOM_WEIGHTS_ON_MESH
    options = kwargs["engine_options"]
    check_run_flags(kwargs["target"], replace(options, flash_attention=options.flash_attention or bool(
        kwargs.get("flash_attention"))), kwargs.get("act_dtype", "bf16"))
    mesh_plan_for(kwargs.get("model_path"), mesh)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", mesh.world)) if under_torchrun() else mesh.world
    threads = threads_per_rank or default_threads(local)
    run(RunSettings(mesh, threads, collective_timeout, local * threads <= len(os.sched_getaffinity(0)), debug),
        task, kwargs)


@click.group(context_settings=CONTEXT)
def cli() -> None:
    """Quantize Llama-family models with AWQ and run them on CPU, NPU and Tenstorrent targets.

    \b
    Examples:
      run_awq quantize --out runs/default-w4g128
      run_awq decode --model runs/default-w4g128 --prompt "The hacker ethic"
      run_awq SUBCOMMAND --help
    (`run_awq --task SUBCOMMAND ...` is the same as `run_awq SUBCOMMAND ...`.)
    """


@cli.command(cls=Subcommand, context_settings=CONTEXT)
@model_option(" The float model to quantize.")
@click.option("--out", default=None, help="Folder for the quantized checkpoint (written atomically; replaces only an "
                                          "earlier checkpoint of this tool unless --overwrite).")
@overwrite_option
@weight_spec_options
@awq_options
@debug_option
@click.pass_context
def quantize(ctx, model_path, out, overwrite, w_bit, group_size, symmetric, lm_head, lm_head_group_size, algorithm,
             awq_mode, awq_cache, dump_awq, export, calib_dataset, n_samples, seqlen, duo_scaling, search_tokens,
             search_dtype, gptq_damp, sq_alpha, act_quant, calibrate_kv, act_order, seed, debug) -> None:
    """Quantize a float model (AWQ, GPTQ or round-to-nearest) into a checkpoint.

    \b
    Example:
      run_awq quantize --model my-llama --out runs/my-llama-w4g128 --w_bit 4 --group_size 128
    """
    if out is None:
        raise UserError("run_awq quantize needs --out.", "Pass --out FOLDER for the quantized checkpoint.")
    _prepare_libraries()
    from .tasks.quantize import quantize_task

    given = {n for n in ("w_bit", "group_size") if ctx.get_parameter_source(n) == click.core.ParameterSource.COMMANDLINE}
    quantize_task(model_path, out, int(w_bit) if "w_bit" in given else None,
                  int(group_size) if "group_size" in given else None, not symmetric, algorithm, awq_mode, awq_cache,
                  dump_awq, lm_head, int(lm_head_group_size), calib_dataset, n_samples, seqlen, seed, duo_scaling,
                  export, overwrite=overwrite, search_tokens=search_tokens, search_dtype=search_dtype,
                  gptq_damp=gptq_damp, act_order=act_order, sq_alpha=sq_alpha, act_quant=act_quant,
                  calibrate_kv=calibrate_kv)


@cli.command(cls=Subcommand, context_settings=CONTEXT)
@model_option(" The checkpoint to export.")
@click.option("--target", default="npu", show_default=True, help="The target whose ONNX Runtime folder to write.")
@click.option("--out", default=None, help="Folder for the exported model (written atomically; replaces only an "
                                          "earlier export of this tool unless --overwrite).")
@overwrite_option
@click.option("--accuracy_level", type=click.IntRange(0, 4), default=4, show_default=True,
              help="MatMulNBits accuracy_level (0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8 activations).")
@format_option
@debug_option
def export(model_path, target, out, overwrite, accuracy_level, fmt, debug) -> None:
    """Write the ONNX Runtime (onnxruntime-genai) model folder of a checkpoint.

    \b
    Example:
      run_awq export --model runs/default-w4g128 --out runs/default-w4g128-onnx
    """
    _prepare_libraries()
    from .tasks.export import export_task

    export_task(model_path, target, out, accuracy_level, fmt, overwrite)


@cli.command(cls=Subcommand, context_settings=CONTEXT)
@model_option()
@run_options
@generation_options
@click.option("--output", type=click.Path(dir_okay=False), default=None,
              help="Write results as JSON (prompt, completion, token counts, prefill and per-token ms).")
@overwrite_option
@mesh_options
@debug_option
def decode(model_path, target, engine, dtype, act_dtype, flash_attention, ep, strict_ep, onnx_dir, accuracy_level,
           tt_precision, tt_device, prefill_chunk, kv_block_size, kv_max_blocks, kv_dtype, kv_scales, prompts,
           prompts_file,
           max_new_tokens, max_seq_len, temperature, top_p, top_k, seed, stop_at_eos, instruct, output, overwrite,
           mesh_shape, pp, tt_mesh, threads_per_rank, collective_timeout, debug) -> None:
    """Generate text from prompts on a target.

    \b
    Example:
      run_awq decode --model runs/default-w4g128 --prompt "The hacker ethic" --max_new_tokens 32
    """
    _prepare_libraries()
    options = _engine_options(target, engine, ep, strict_ep, onnx_dir, accuracy_level, tt_precision, tt_device,
                              prefill_chunk, kv_block_size, kv_max_blocks, kv_dtype, kv_scales)
    kwargs = dict(model_path=model_path, target=target, dtype=dtype, flash_attention=flash_attention,
                  max_seq_len=max_seq_len, prompts=list(prompts), prompts_file=prompts_file,
                  max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed,
                  stop_at_eos=stop_at_eos, instruct=instruct, output=output, act_dtype=act_dtype,
                  engine_options=options, overwrite=overwrite)
    _run_task("edgeawq.tasks.decode:decode_task", kwargs, mesh_shape, pp, tt_mesh, threads_per_rank,
              collective_timeout, debug)


max_seq_len_option = click.option(
    "--max_seq_len", type=click.IntRange(min=2), default=None,
    help="Context length per sequence (prompt + new tokens), at most the model context. Default: min(model context, "
         "2048).")


@cli.command(cls=Subcommand, context_settings=CONTEXT)
@model_option(" A quantized checkpoint the native engine runs.")
@run_options
@max_seq_len_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (loopback by default; 0.0.0.0 exposes the server to the network).")
@click.option("--port", type=int, default=8000, show_default=True, help="TCP port (0 = a free one, printed).")
@click.option("--api_key", default=None, envvar="EDGEAWQ_API_KEY", show_envvar=True,
              help="Require 'Authorization: Bearer KEY' on every request.")
@click.option("--max_batch", type=int, default=8, show_default=True,
              help="Sequences decoded at once (rows of the running batch); more requests wait in the queue.")
@click.option("--max_queue", type=int, default=64, show_default=True,
              help="Requests that may wait for a row; one more gets HTTP 429.")
@click.option("--model_name", default=None, help="The model id clients give (default: the checkpoint folder's name).")
@click.option("--max_body_bytes", type=click.IntRange(min=1024), default=1 << 20, show_default=True,
              help="Largest request body accepted (HTTP 413 above).")
@click.option("--threads", type=int, default=None,
              help="Compute threads of the engine (default: all cores; the HTTP side shares them).")
@debug_option
def serve(model_path, target, engine, dtype, max_seq_len, host, port, api_key, max_batch, max_queue, model_name,
          max_body_bytes, threads, debug, **run_flags) -> None:
    """Serve a checkpoint over an OpenAI-compatible HTTP API with continuous batching.

    \b
    POST /v1/completions, POST /v1/chat/completions (streaming with "stream": true), GET /v1/models, GET /health.
    Example:
      run_awq serve --model runs/default-w4g128 --port 8000
      curl http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \\
           -d '{"model": "default-w4g128", "prompt": "The hacker ethic", "max_tokens": 32}'
    """
    from .tasks.serve import serve_task

    options = _engine_options(target, engine, **run_flags)
    _prepare_libraries()
    serve_task(target, model_path, options, dtype, max_seq_len, host, port, api_key, max_batch, max_queue, model_name,
               max_body_bytes, threads)


@cli.command(cls=Subcommand, context_settings=CONTEXT)
@model_option(" A quantized checkpoint the native engine runs, with a chat template.")
@run_options
@max_seq_len_option
@click.option("--max_new_tokens", type=click.IntRange(min=1), default=512, show_default=True,
              help="Longest reply (a reply also ends at the end-of-turn token).")
@click.option("--temperature", type=click.FloatRange(0.0, 2.0), default=0.7, show_default=True, help="0 = greedy.")
@click.option("--top_p", type=float, default=0.95, show_default=True, help="Nucleus sampling mass, in (0, 1].")
@click.option("--top_k", type=int, default=0, show_default=True, help="Keep the k most likely tokens; 0 = all.")
@click.option("--seed", type=click.IntRange(0, 2**64 - 1), default=None, help="Seed of the sampler (default: random).")
@click.option("--system", default=None, help="A system message that starts the conversation.")
@debug_option
def chat(model_path, target, engine, dtype, max_seq_len, max_new_tokens, temperature, top_p, top_k, seed, system,
         debug, **run_flags) -> None:
    """Chat with a checkpoint in the terminal (replies stream; history kept within the context).

    \b
    Commands: /reset forgets the conversation, /exit (or Ctrl-D) leaves; Ctrl-C stops a reply.
    Example:
      run_awq chat --model runs/smollm2-w4g64
    """
    from .tasks.chat import chat_task

    _prepare_libraries()
    chat_task(target, model_path, _engine_options(target, engine, **run_flags), dtype, max_seq_len, max_new_tokens,
              temperature, top_p, top_k, seed, system)


@cli.command(cls=Subcommand, context_settings=CONTEXT)
@model_option()
@run_options
@dataset_option
@click.option("--seqlen", type=click.IntRange(min=2), default=2048, show_default=True,
              help="Tokens per evaluation window.")
@click.option("--nsamples", type=click.IntRange(min=1), default=None,
              help="Evaluate only the first N windows (default: all).")
@click.option("--compare", is_flag=True,
              help="Also evaluate the float model (the quantized checkpoint's source, or --float_model) on the same "
                   "windows.")
@float_model_option
@format_option
@mesh_options
@debug_option
def perplexity(model_path, target, engine, dtype, act_dtype, flash_attention, ep, strict_ep, onnx_dir, accuracy_level,
               tt_precision, tt_device, prefill_chunk, kv_block_size, kv_max_blocks, kv_dtype, kv_scales, dataset,
               seqlen,
               nsamples, compare, float_model, fmt, mesh_shape, pp, tt_mesh, threads_per_rank, collective_timeout,
               debug) -> None:
    """Perplexity of a checkpoint on a dataset (the AWQ/GPTQ-paper protocol).

    \b
    Example:
      run_awq perplexity --model runs/default-w4g128 --seqlen 512 --compare
    """
    _prepare_libraries()
    options = _engine_options(target, engine, ep, strict_ep, onnx_dir, accuracy_level, tt_precision, tt_device,
                              prefill_chunk, kv_block_size, kv_max_blocks, kv_dtype, kv_scales)
    kwargs = dict(model_path=model_path, target=target, dtype=dtype, act_dtype=act_dtype,
                  flash_attention=flash_attention, dataset=dataset, seqlen=seqlen, nsamples=nsamples, compare=compare,
                  float_model=float_model, fmt=fmt, engine_options=options)
    _run_task("edgeawq.tasks.perplexity:perplexity_task", kwargs, mesh_shape, pp, tt_mesh, threads_per_rank,
              collective_timeout, debug)


@cli.command(cls=Subcommand, context_settings=CONTEXT)
@model_option()
@run_options
@dataset_option
@click.option("--seqlen", type=click.IntRange(min=2), default=256, show_default=True,
              help="Tokens per window (half of them prefilled, the rest teacher-forced).")
@click.option("--nsamples", type=click.IntRange(min=1), default=4, show_default=True, help="Windows.")
@click.option("--pcc_tokens", type=click.IntRange(min=0), default=16, show_default=True,
              help="Rows of the per-token PCC table (decode positions of the first window).")
@float_model_option
@format_option
@mesh_options
@debug_option
def accuracy(model_path, target, engine, dtype, act_dtype, flash_attention, ep, strict_ep, onnx_dir, accuracy_level,
             tt_precision, tt_device, prefill_chunk, kv_block_size, kv_max_blocks, kv_dtype, kv_scales, dataset, seqlen,
             nsamples,
             pcc_tokens, float_model, fmt, mesh_shape, pp, tt_mesh, threads_per_rank, collective_timeout,
             debug) -> None:
    """Teacher-forced top-1/top-5 agreement and logits PCC against the float reference.

    \b
    Example:
      run_awq accuracy --model runs/default-w4g128 --target tt --tt_precision accuracy
    """
    _prepare_libraries()
    options = _engine_options(target, engine, ep, strict_ep, onnx_dir, accuracy_level, tt_precision, tt_device,
                              prefill_chunk, kv_block_size, kv_max_blocks, kv_dtype, kv_scales, flash_attention)
    kwargs = dict(model_path=model_path, target=target, dtype=dtype, act_dtype=act_dtype, dataset=dataset,
                  seqlen=seqlen, nsamples=nsamples, float_model=float_model, fmt=fmt, engine_options=options,
                  pcc_tokens=pcc_tokens)
    _run_task("edgeawq.tasks.accuracy:accuracy_task", kwargs, mesh_shape, pp, tt_mesh, threads_per_rank,
              collective_timeout, debug)


def _benchmark(task: str, model_path, target, engine, dtype, act_dtype, flash_attention, ep, strict_ep, onnx_dir,
               accuracy_level, tt_precision, tt_device, prefill_chunk, kv_block_size, kv_max_blocks, kv_dtype,
               kv_scales,
               prompt_lengths, new_tokens, repeats, batch, random_weights, profile, compare_target, w_bit, group_size,
               symmetric, lm_head, lm_head_group_size, overwrite, fmt, mesh_shape, pp, tt_mesh, threads_per_rank,
               collective_timeout, debug=False) -> None:
    ctx = click.get_current_context()
    spec_flags = [f"--{n}" for n in ("w_bit", "group_size", "symmetric", "lm_head", "lm_head_group_size")
                  if ctx.get_parameter_source(n) == click.core.ParameterSource.COMMANDLINE]
    if spec_flags and not random_weights:
        raise UserError(f"{', '.join(spec_flags)} describe how --random_weights quantizes its weights; a checkpoint "
                        "is benchmarked as it was quantized.", "Add --random_weights, or drop those flags.")
    _prepare_libraries()
    from .kernels.quantizer import QuantSpec

    options = _engine_options(target, engine, ep, strict_ep, onnx_dir, accuracy_level, tt_precision, tt_device,
                              prefill_chunk, kv_block_size, kv_max_blocks, kv_dtype, kv_scales)
    spec = QuantSpec(int(w_bit), int(group_size), not symmetric).validate() if random_weights else None
    if compare_target is None:
        compare_target = None if target == "cpu" else "cpu"
    kwargs = dict(task=task, model_path=model_path, target=target, dtype=dtype, act_dtype=act_dtype,
                  flash_attention=flash_attention, prompt_lengths=prompt_lengths, new_tokens=new_tokens,
                  repeats=repeats, fmt="md" if fmt == "text" else fmt, profile=profile, random_spec=spec,
                  engine_options=options, compare_target=None if compare_target == "none" else compare_target,
                  random_lm_head_group=int(lm_head_group_size) if (random_weights and lm_head) else None,
                  overwrite=overwrite, batch=batch)
    _run_task("edgeawq.tasks.benchmark:benchmark_task", kwargs, mesh_shape, pp, tt_mesh, threads_per_rank,
              collective_timeout, debug)


def _benchmark_command(name: str, doc: str):
    @cli.command(name, cls=Subcommand, context_settings=CONTEXT, help=doc)
    @model_option(" With --random_weights: a shipped shape name or a config.json.")
    @run_options
    @benchmark_options
    @weight_spec_options
    @overwrite_option
    @format_option
    @mesh_options
    @debug_option
    def command(debug, **flags) -> None:
        _benchmark(name, debug=debug, **flags)
    return command


benchmark = _benchmark_command("benchmark", """Prefill and decode speed per prompt length (4..256 tokens by default).

    \b
    Example:
      run_awq benchmark --model runs/default-w4g128 --prompt_lengths 64,256 --new_tokens 32
      run_awq benchmark --model llama-2-7b --random_weights --w_bit 4 --group_size 128
    """)
benchmark_long = _benchmark_command("benchmark_long", """Speed at long prompts (512..4096 tokens by default).

    \b
    Example:
      run_awq benchmark_long --model runs/default-w4g128 --prompt_lengths 512,1024
    """)


def task_alias(args: list[str]) -> list[str]:
    """`--task X rest` (or `--task=X`) -> `X rest`; other argument lists unchanged."""
    for i, arg in enumerate(args):
        if arg == "--":
            break
        if arg == "--task" or arg.startswith("--task="):
            value = arg.split("=", 1)[1] if "=" in arg else (args[i + 1] if i + 1 < len(args) else None)
            rest = args[:i] + args[i + (1 if "=" in arg else 2):]
            if value not in TASKS:
                raise click.UsageError(f"--task {value!r} is not a task; use one of: {', '.join(TASKS)} (or run "
                                       "`run_awq SUBCOMMAND` directly).")
            return [value, *rest]
    return args


def _with_huge_pages(argv: list[str] | None) -> None:
    """Re-exec once with glibc's malloc asking for transparent huge pages (GLIBC_TUNABLES glibc.malloc.hugetlb=1):
    the weight buffers ONNX Runtime allocates then stream from memory with fewer TLB misses (decode measured 5-8%
    faster on the project's machine). Linux with THP in madvise mode only; EDGEAWQ_NO_HUGEPAGES=1 opts out."""
    if argv is not None or os.environ.get("EDGEAWQ_NO_HUGEPAGES") or "hugetlb" in os.environ.get("GLIBC_TUNABLES", ""):
        return
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            if "[madvise]" not in f.read():
                return
    except OSError:
        return
    tunables = ":".join(t for t in (os.environ.get("GLIBC_TUNABLES"), "glibc.malloc.hugetlb=1") if t)
    os.environ["GLIBC_TUNABLES"] = tunables
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])   # exactly what was run, interpreter flags too


def main(argv: list[str] | None = None) -> None:
    _with_huge_pages(argv)
    # Everything loads from local paths: never reach for a model hub, and keep library chatter off stderr.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        cli.main(args=task_alias(args), prog_name="run_awq", standalone_mode=False)
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
    except (click.exceptions.Abort, KeyboardInterrupt):   # click turns Ctrl-C into Abort (no prompts are used)
        if debug:
            raise
        click.echo("\nInterrupted. Nothing half-written was left: outputs are replaced only when complete.", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
