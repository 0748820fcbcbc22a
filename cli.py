"""`run_awq`: the command-line entry point. Thin: parses flags and calls library code.

Problems the user can fix are printed as one paragraph with the fix and exit with status 2 (click's own flag
errors too); `--debug` shows the traceback instead.
"""
from __future__ import annotations

import os
import sys

import click

from .errors import UserError

TASKS = ("quantize", "export", "decode", "benchmark", "benchmark_long", "perplexity", "accuracy")


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--task", type=click.Choice(TASKS), required=True, help="What to do.")
@click.option("--model", "model_path", default=None,
              help="Checkpoint folder (Hugging Face or Meta format), or an embedded model alias: default, "
                   "default-llama, default-qwen2. Omitted: the embedded default model (default-llama).")
@click.option("--target", default="cpu", show_default=True,
              help="Execution backend: cpu (ONNX Runtime graph or PyTorch), npu (ONNX Runtime MatMulNBits graph on "
                   "an NPU execution provider) or tt (Tenstorrent numerics emulated on the CPU).")
@click.option("--tt_precision", default="performance", show_default=True,
              help="tt: precision config: performance, accuracy (tt-metal LLM demo defaults) or a JSON file with "
                   "per-layer overrides (docs/tenstorrent.md).")
@click.option("--tt_device", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
              help="tt: run the Linears on a Tenstorrent card through ttnn (untested by this project). auto: when "
                   "ttnn sees a card, else the CPU emulation; on: the card or an error; off: always the emulation.")
@click.option("--engine", type=click.Choice(["auto", "native", "onnx", "torch"]), default="auto",
              show_default=True,
              help="cpu: native = the project's own C++ decoder (int8 x 2/3/4-bit kernels, built at first use); "
                   "onnx = the exported ONNX Runtime graph on the CPU provider; torch = PyTorch (the reference). "
                   "auto: native for quantized checkpoints it can run (else onnx), torch for float ones, "
                   "--flash_attention and --act_dtype aie.")
@click.option("--ep", default=None,
              help="npu: execution-provider preference list, comma-separated (short or full names). Default: "
                   "VitisAI,QNN,OpenVINO,DML,CPU.")
@click.option("--strict_ep", is_flag=True,
              help="npu: falling back to the CPU provider (a missing NPU provider, or nodes it cannot run) is an "
                   "error.")
@click.option("--onnx_dir", type=click.Path(file_okay=False), default=None,
              help="npu: the export folder to run (exported there if missing). Default: the export cache "
                   "($EDGEAWQ_CACHE, else ~/.cache/edgeawq).")
@click.option("--accuracy_level", type=click.IntRange(0, 4), default=4, show_default=True,
              help="npu/export: MatMulNBits accuracy_level (0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8 activations).")
@click.option("--compare_target", default=None,
              help="benchmark: also measure this target in the same run and report the ratios. Default: cpu when "
                   "--target is not cpu; 'none' turns it off.")
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
@click.option("--seed", type=click.IntRange(0, 2**64 - 1), default=0, show_default=True,
              help="Seed of the sampler and of the calibration sampling.")
@click.option("--stop_at_eos/--ignore_eos", default=True, show_default=True,
              help="Stop a sequence when it produces an end-of-sequence token.")
@click.option("--instruct", is_flag=True, help="Wrap each prompt in the tokenizer's chat template.")
@click.option("--output", type=click.Path(dir_okay=False), default=None,
              help="Write results as JSON (prompt, completion, token counts, prefill and per-token ms).")
@click.option("--out", default=None,
              help="quantize / export: folder for the quantized checkpoint or the exported model (written "
                   "atomically).")
@click.option("--overwrite", is_flag=True,
              help="Replace an --out folder that is not an earlier checkpoint / export of this tool (its contents "
                   "are lost), or an --output / --profile / --dump_awq file that is not an earlier result of it. "
                   "Never turns a file into a folder; never the current folder, a home folder, the root or a folder "
                   "holding the source model.")
@click.option("--w_bit", type=click.Choice(["2", "3", "4", "8"]), default="4", show_default=True,
              help="quantize: weight bits (3-bit codes are stored in a 4-bit container).")
@click.option("--group_size", type=click.Choice(["32", "64", "128", "256", "-1"]), default="128",
              show_default=True, help="quantize: input channels per group (-1 = one group per output channel).")
@click.option("--symmetric", is_flag=True, help="quantize: symmetric groups (no zero point).")
@click.option("--algorithm", type=click.Choice(["awq", "pergrp"]), default="awq", show_default=True,
              help="quantize: awq = activation-aware scales and clipping; pergrp = plain round-to-nearest.")
@click.option("--awq", "awq_mode", type=click.Choice(["run", "load", "none"]), default="run", show_default=True,
              help="quantize: run the AWQ search, load llm-awq results (--awq_cache), or none (RTN).")
@click.option("--awq_cache", type=click.Path(dir_okay=False), default=None,
              help="quantize: llm-awq search-result file for --awq load.")
@click.option("--dump_awq", type=click.Path(dir_okay=False), default=None,
              help="quantize: also save the AWQ search results as an llm-awq cache file.")
@click.option("--export", "export", type=click.Choice(["native", "awq"]), default="native", show_default=True,
              help="quantize: checkpoint layout: the project's native format, or AutoAWQ GEMM (4-bit; loads in "
                   "transformers, vLLM and the onnxruntime-genai builder).")
@click.option("--lm_head", is_flag=True, help="quantize: quantize lm_head too (RTN, --lm_head_group_size).")
@click.option("--lm_head_group_size", type=click.Choice(["32", "64", "128", "256", "-1"]), default="32",
              show_default=True)
@click.option("--calib_dataset", default=None,
              help="quantize: calibration text: a local .txt/.jsonl/.parquet file or a locally cached Hugging Face "
                   "dataset name. Default: the shipped corpus' train split.")
@click.option("--n_samples", type=click.IntRange(min=1), default=128, show_default=True,
              help="quantize: calibration blocks.")
@click.option("--seqlen", type=click.IntRange(min=2), default=None,
              help="Tokens per calibration block (quantize, default 512) or per evaluation window (perplexity, "
                   "default 2048; accuracy, default 256, half of them prefilled).")
@click.option("--duo_scaling", is_flag=True, help="quantize: scale search with weight magnitudes as well.")
@click.option("--dataset", default="corpus-test", show_default=True,
              help="perplexity: corpus-test, corpus-valid (shipped splits), wikitext2 (local datasets cache) or a "
                   "text file.")
@click.option("--nsamples", type=click.IntRange(min=1), default=None,
              help="perplexity: evaluate only the first N windows (default: all); accuracy: windows (default 4).")
@click.option("--pcc_tokens", type=click.IntRange(min=0), default=16, show_default=True,
              help="accuracy: rows of the per-token PCC table (decode positions of the first window).")
@click.option("--compare", is_flag=True,
              help="perplexity: also evaluate the float model (the quantized checkpoint's source, or --float_model) "
                   "on the same windows.")
@click.option("--float_model", default=None, help="perplexity: the float model for --compare; accuracy: the float reference (default: the "
                   "quantized checkpoint's recorded source, or the model itself).")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "jsonl", "md"]), default="text",
              show_default=True, help="Output format of perplexity and benchmark results (text = md for benchmarks).")
@click.option("--prompt_lengths", default=None,
              help="benchmark: comma-separated prompt lengths. Default: 4,8,16,32,64,128,256 (benchmark), "
                   "512,1024,2048,4096 (benchmark_long).")
@click.option("--new_tokens", type=int, default=32, show_default=True, help="benchmark: tokens generated per run.")
@click.option("--repeats", type=int, default=3, show_default=True, help="benchmark: timed runs per length (median).")
@click.option("--random_weights", is_flag=True,
              help="benchmark: --model names a shipped shape (llama-2-7b, llama-3.1-8b, llama-3.2-1b, qwen2.5-7b) or a "
                   "config.json; random weights are RTN-quantized in memory with --w_bit/--group_size (and "
                   "lm_head with --lm_head/--lm_head_group_size).")
@click.option("--profile", type=click.Path(dir_okay=False), default=None,
              help="benchmark: write per-module prefill and per-token times to this CSV file (PyTorch modules, or the "
                   "native engine's per-layer steps).")
@click.option("--act_dtype", type=click.Choice(["bf16", "fp32", "aie"]), default="bf16", show_default=True,
              help="Activation dtype inside quantized Linears (bf16 = w4abf16). aie: the Ryzen AI NPU kernel's "
                   "numerics (bf16 activations and scales, int4 weights, fp32 accumulation, bf16 output) on the "
                   "cpu target, to predict NPU accuracy without the device.")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
def cli(task: str, model_path: str | None, target: str, dtype: str, flash_attention: bool,
        max_seq_len: int | None, prompts: tuple[str, ...], prompts_file: str | None, max_new_tokens: int,
        temperature: float, top_p: float, top_k: int, seed: int, stop_at_eos: bool, instruct: bool,
        output: str | None, out: str | None, overwrite: bool, export: str, w_bit: str, group_size: str, symmetric: bool, algorithm: str,
        awq_mode: str, awq_cache: str | None, dump_awq: str | None, lm_head: bool, lm_head_group_size: str,
        calib_dataset: str | None, n_samples: int, seqlen: int | None, duo_scaling: bool, dataset: str,
        nsamples: int | None, compare: bool, float_model: str | None, fmt: str, prompt_lengths: str | None,
        new_tokens: int, repeats: int, random_weights: bool, profile: str | None, act_dtype: str,
        engine: str, tt_precision: str, tt_device: str, pcc_tokens: int, ep: str | None, strict_ep: bool, onnx_dir: str | None, accuracy_level: int, compare_target: str | None,
        debug: bool) -> None:
    """Quantize Llama-family models with AWQ and run them on CPU, NPU and Tenstorrent targets.

    \b
    Example:
      run_awq --task decode --prompt "The hacker ethic"
    """
    from pathlib import Path

    from dataclasses import replace

    from .runtime.backends import EngineOptions

    options = EngineOptions(engine=engine, ep=ep, strict_ep=strict_ep, onnx_dir=Path(onnx_dir) if onnx_dir else None,
                            accuracy_level=accuracy_level, tt_precision=tt_precision,
                            tt_device=tt_device)
    if task == "export":
        from .tasks.export import export_task

        export_task(model_path, target, out, accuracy_level, fmt, overwrite)
    elif task == "quantize":
        from .tasks.quantize import quantize_task

        if out is None:
            raise UserError("--task quantize needs --out.", "Pass --out FOLDER for the quantized checkpoint.")
        if flash_attention:
            raise UserError("--flash_attention is a runtime choice, not a checkpoint property: q/k/v and gate/up are "
                            "grouped when the checkpoint is loaded.",
                            "Drop it here and pass it to decode, benchmark or perplexity.")
        quantize_task(model_path, out, int(w_bit), int(group_size), not symmetric, algorithm, awq_mode, awq_cache,
                      dump_awq, lm_head, int(lm_head_group_size), calib_dataset, n_samples, seqlen or 512, seed,
                      duo_scaling, export, overwrite=overwrite)
    elif task in ("benchmark", "benchmark_long"):
        from .tasks.benchmark import benchmark_task

        from .kernels.quantizer import QuantSpec

        spec = QuantSpec(int(w_bit), int(group_size), not symmetric).validate() if random_weights else None
        if compare_target is None:
            compare_target = None if target == "cpu" else "cpu"
        benchmark_task(task, model_path, target, dtype, act_dtype, flash_attention, prompt_lengths, new_tokens,
                       repeats, "md" if fmt == "text" else fmt, profile, spec, options,
                       None if compare_target == "none" else compare_target,
                       int(lm_head_group_size) if (random_weights and lm_head) else None, overwrite=overwrite)
    elif task == "perplexity":
        from .tasks.perplexity import perplexity_task

        perplexity_task(model_path, target, dtype, act_dtype, flash_attention, dataset, seqlen or 2048, nsamples,
                        compare, float_model, fmt, options)
    elif task == "accuracy":
        from .tasks.accuracy import accuracy_task

        accuracy_task(model_path, target, dtype, act_dtype, dataset, seqlen or 256, nsamples or 4, float_model, fmt,
                      replace(options, flash_attention=flash_attention), pcc_tokens)
    elif task == "decode":
        from .tasks.decode import decode_task

        decode_task(model_path=model_path, target=target, dtype=dtype, flash_attention=flash_attention,
                    max_seq_len=max_seq_len, prompts=list(prompts), prompts_file=prompts_file,
                    max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed,
                    stop_at_eos=stop_at_eos, instruct=instruct, output=output, act_dtype=act_dtype,
                    engine_options=options, overwrite=overwrite)


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
    os.execv(sys.executable, [sys.executable, "-m", "edgeawq.cli", *sys.argv[1:]])


def main(argv: list[str] | None = None) -> None:
    _with_huge_pages(argv)
    # Everything loads from local paths: never reach for a model hub, and keep library chatter off stderr.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.logging.set_verbosity_error()
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
    except (click.exceptions.Abort, KeyboardInterrupt):   # click turns Ctrl-C into Abort (no prompts are used)
        if debug:
            raise
        click.echo("\nInterrupted. Nothing half-written was left: outputs are replaced only when complete.", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
