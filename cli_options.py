"""The flags of `run_awq`'s subcommands, in groups: each subcommand stacks the groups it uses and nothing else.

A group is a decorator adding click options; the callback receives them as keyword arguments under the names below.
Nothing here imports torch or transformers: `run_awq --help` and flag errors answer without loading them.
"""
from __future__ import annotations

import os
from typing import Callable

import click

GROUP_SIZES = ["32", "64", "128", "256", "-1"]


def _stack(*options: Callable) -> Callable:
    def apply(fn: Callable) -> Callable:
        for option in reversed(options):
            fn = option(fn)
        return fn
    return apply


def model_option(help_suffix: str = "") -> Callable:
    return click.option(
        "--model", "model_path", default=None,
        help="Checkpoint folder (Hugging Face, Meta format, a quantized checkpoint of this tool or AutoAWQ GEMM), or "
             "an embedded model alias: default, default-llama, default-qwen2. Omitted: default-llama." + help_suffix)


def _debug_and_quiet(fn: Callable) -> Callable:
    fn = click.option("--quiet", is_flag=True, expose_value=False, is_eager=True,
                      callback=lambda ctx, param, value: value and os.environ.__setitem__("EDGEAWQ_QUIET", "1"),
                      help="No progress bars (they show only on a terminal anyway).")(fn)
    return click.option("--debug", is_flag=True, help="Show tracebacks for errors.")(fn)


debug_option = _debug_and_quiet

overwrite_option = click.option(
    "--overwrite", is_flag=True,
    help="Replace an output that is not an earlier artefact of this tool: a folder of other files at --out (its "
         "contents are lost), or a file at --output / --profile / --dump_awq. Never turns a file into a folder; never "
         "the current folder, a home folder, the root or a folder holding the source model.")

format_option = click.option("--format", "fmt", type=click.Choice(["text", "json", "jsonl", "md"]), default="text",
                             show_default=True, help="Output format of the results (text = md for benchmarks).")

# where and how a model runs: every command that runs one
run_options = _stack(
    click.option("--target", default="cpu", show_default=True,
                 help="Execution backend: cpu (native C++ engine, ONNX Runtime graph or PyTorch), npu (ONNX Runtime "
                      "MatMulNBits graph on an NPU execution provider) or tt (Tenstorrent numerics emulated on the "
                      "CPU)."),
    click.option("--engine", type=click.Choice(["auto", "native", "onnx", "torch"]), default="auto",
                 show_default=True,
                 help="cpu: native = the project's own C++ decoder (int8 x 2/3/4/8-bit kernels, built at first use); "
                      "onnx = the exported ONNX Runtime graph on the CPU provider; torch = PyTorch (the reference). "
                      "auto: native for quantized checkpoints it can run (else onnx where MatMulNBits can hold "
                      "them, else torch), torch for float ones, --flash_attention and --act_dtype aie."),
    click.option("--dtype", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True,
                 help="Dtype of the float weights and activations. The torch engine computes in it; the native "
                      "and onnx engines round the float weights to it and compute float32; --target tt refuses "
                      "fp16 (ttnn has no fp16 type)."),
    click.option("--act_dtype", type=click.Choice(["bf16", "fp32", "fp16", "aie"]), default="bf16",
                 show_default=True,
                 help="Activation dtype inside quantized Linears of the torch engine (bf16 = w4abf16, fp16 = "
                      "w4afp16). aie: the Ryzen AI NPU kernel's "
                      "numerics (bf16 activations and scales, int4 weights, fp32 accumulation, bf16 output) on the "
                      "cpu target, to predict NPU accuracy without the device."),
    click.option("--flash_attention", is_flag=True,
                 help="PyTorch engine: q/k/v grouped into one projection and gate/up into one, attention through the "
                      "project's SDPA path with a static KV cache allocated once for --max_seq_len."),
    click.option("--ep", default=None,
                 help="npu: execution-provider preference list, comma-separated (short or full names). Default: "
                      "VitisAI,QNN,OpenVINO,DML,CPU."),
    click.option("--strict_ep", is_flag=True,
                 help="npu: falling back to the CPU provider (a missing NPU provider, or nodes it cannot run) is an "
                      "error."),
    click.option("--onnx_dir", type=click.Path(file_okay=False), default=None,
                 help="npu: the export folder to run (exported there if missing). Default: the export cache "
                      "($EDGEAWQ_CACHE, else ~/.cache/edgeawq)."),
    click.option("--accuracy_level", type=click.IntRange(0, 4), default=4, show_default=True,
                 help="npu: MatMulNBits accuracy_level (0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8 activations)."),
    click.option("--tt_precision", default="performance", show_default=True,
                 help="tt: precision config: performance, accuracy (tt-metal LLM demo defaults) or a JSON file with "
                      "per-layer overrides (docs/tenstorrent.md)."),
    click.option("--tt_device", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
                 help="tt: run the Linears on a Tenstorrent card through ttnn (untested by this project). auto: when "
                      "ttnn sees a card, else the CPU emulation; on: the card or an error; off: always the "
                      "emulation."),
    click.option("--prefill_chunk", type=click.IntRange(min=0), default=None,
                 help="Feed prompts to the engine in chunks of this many tokens (results equal a one-call prefill; "
                      "activation memory grows with the chunk, not the prompt). 0 = one call. Default: the engine's "
                      "measured choice (native 128, onnx 512, torch 1024, tt 256; README, \"Long context\"); serve and "
                      "chat: 16 prompt tokens per decode step (docs/serving.md)."),
    click.option("--kv_block_size", type=click.IntRange(min=0), default=None,
                 help="cpu native and torch --flash_attention: KV cache blocks of this many tokens (a multiple of 16 "
                      "on native), handed out as sequences grow and freed when they end; 0 = one contiguous block "
                      "of --max_seq_len per sequence. Default: 64 (docs/architecture.md)."),
    click.option("--kv_max_blocks", type=click.IntRange(min=1), default=None,
                 help="The paged KV cache's pool, in blocks, shared by the batch; running out is an error naming "
                      "the size needed. Default: batch x context (memory is used only as blocks fill)."),
    click.option("--kv_dtype", type=click.Choice(["fp32", "bf16", "fp16", "int8"]), default="fp32", show_default=True,
                 help="Element type of the KV cache (cpu native; the torch engine with --flash_attention holds the "
                      "same values): bf16 / fp16 halve it, int8 (codes with a scale per token and KV head) quarters "
                      "it. Accuracy and speed per type: README, \"Long context\"."),
    click.option("--kv_scales", type=click.Choice(["per_token", "calibrated"]), default="per_token",
                 show_default=True,
                 help="Scales of an int8 KV cache: one per token and KV head, or that after dividing the channels by "
                      "the checkpoint's calibrated scales (run_awq quantize --calibrate_kv; measured no better yet: "
                      "README, \"Long context\")."),
)

seed_option = click.option("--seed", type=click.IntRange(0, 2**64 - 1), default=0, show_default=True,
                           help="Seed of the sampler (decode) or of the calibration sampling (quantize).")

generation_options = _stack(
    click.option("--prompt", "prompts", multiple=True, help="A prompt; repeat for a batch (at most 32)."),
    click.option("--prompts", "prompts_file", type=click.Path(dir_okay=False), default=None,
                 help='Prompts file: JSON list of strings or {"prompt": ...} objects, or JSON Lines.'),
    click.option("--max_new_tokens", type=click.IntRange(min=1), default=64, show_default=True),
    click.option("--max_seq_len", type=click.IntRange(min=2), default=None,
                 help="Context length (prompt + new tokens) to allocate, at most the model context "
                      "(max_position_embeddings, or what its RoPE scaling implies). Default: min(model context, "
                      "2048)."),
    click.option("--temperature", type=float, default=0.0, show_default=True, help="0 = greedy."),
    click.option("--top_p", type=float, default=1.0, show_default=True, help="Nucleus sampling mass, in (0, 1]."),
    click.option("--top_k", type=int, default=0, show_default=True, help="Keep the k most likely tokens; 0 = all."),
    seed_option,
    click.option("--stop_at_eos/--ignore_eos", default=True, show_default=True,
                 help="Stop a sequence when it produces an end-of-sequence token."),
    click.option("--instruct", is_flag=True, help="Wrap each prompt in the tokenizer's chat template."),
)

# how weights are quantized: quantize, and benchmark --random_weights
weight_spec_options = _stack(
    click.option("--w_bit", type=click.Choice(["2", "3", "4", "8"]), default="4", show_default=True,
                 help="Weight bits (3-bit codes are stored in a 4-bit container; --algorithm smoothquant: 8)."),
    click.option("--group_size", type=click.Choice(GROUP_SIZES), default="128", show_default=True,
                 help="Input channels per group (-1 = one group per output channel; --algorithm smoothquant: -1)."),
    click.option("--symmetric", is_flag=True, help="Symmetric groups (no zero point)."),
    click.option("--lm_head", is_flag=True, help="Quantize lm_head too (RTN, --lm_head_group_size)."),
    click.option("--lm_head_group_size", type=click.Choice(GROUP_SIZES), default="32", show_default=True),
)

awq_options = _stack(
    click.option("--algorithm", type=click.Choice(["awq", "gptq", "awq+gptq", "smoothquant", "pergrp", "import"]),
                 default="awq",
                 show_default=True,
                 help="awq = activation-aware scales and clipping; gptq = GPTQ rounding (Hessian of each Linear's "
                      "calibration input, true-sequential, groups of consecutive channels); awq+gptq = AWQ scales and "
                      "clips, then GPTQ rounding; smoothquant = W8A8: activation outliers migrated into the "
                      "weights (--sq_alpha), int8 symmetric weights per output channel, int8 activations "
                      "(--act_quant), lm_head float; pergrp = plain round-to-nearest; import = keep a "
                      "Q4_0 or Q4_1 GGUF file's blocks as they are (codes, fp16 scales, zero point 8 or, for Q4_1, "
                      "zero point 0 plus the fp16 group minimums; needs --group_size 32; bit-exact to llama.cpp's "
                      "dequantization)."),
    click.option("--awq", "awq_mode", type=click.Choice(["run", "load", "none"]), default="run", show_default=True,
                 help="Run the AWQ search, load llm-awq results (--awq_cache), or none (RTN)."),
    click.option("--awq_cache", type=click.Path(dir_okay=False), default=None,
                 help="llm-awq search-result file for --awq load."),
    click.option("--dump_awq", type=click.Path(dir_okay=False), default=None,
                 help="Also save the AWQ search results as an llm-awq cache file."),
    click.option("--export", "export", type=click.Choice(["native", "awq"]), default="native", show_default=True,
                 help="Checkpoint layout: the project's native format, or AutoAWQ GEMM (4-bit; loads in "
                      "transformers, vLLM and the onnxruntime-genai builder)."),
    click.option("--calib_dataset", default=None,
                 help="Calibration text: a local .txt/.jsonl/.parquet file or a locally cached Hugging Face dataset "
                      "name. Default: the shipped corpus' train split."),
    click.option("--n_samples", type=click.IntRange(min=1), default=128, show_default=True,
                 help="Calibration blocks."),
    click.option("--seqlen", type=click.IntRange(min=2), default=512, show_default=True,
                 help="Tokens per calibration block."),
    click.option("--duo_scaling", is_flag=True, help="Scale search with weight magnitudes as well."),
    click.option("--search_tokens", type=click.IntRange(min=0), default=4096, show_default=True,
                 help="Calibration tokens (whole blocks, evenly spaced) the scale-search loss is measured on; the "
                      "activation statistics use every block. 0: all."),
    click.option("--search_dtype", type=click.Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True,
                 help="Dtype of the calibration forward and the scale search; auto = bf16 where the CPU has "
                      "AVX512-BF16 or AMX, else fp32. Clip search and quantization always use fp32 weights."),
    click.option("--gptq_damp", type=click.FloatRange(min=0.0, max=1.0, min_open=True), default=None,
                 help="GPTQ damping: this fraction of the mean Hessian diagonal is added to it.  [default: 0.01; "
                      "GPTQ algorithms only]"),
    click.option("--sq_alpha", type=float, default=None,
                 help="SmoothQuant migration strength in [0, 1]: s = max|X|^a / max|W|^(1-a) per input channel.  "
                      "[default: 0.5; smoothquant only]"),
    click.option("--act_quant", type=click.Choice(["per_token", "per_tensor"]), default=None,
                 help="SmoothQuant int8 activations: one dynamic scale per token, or one static scale per Linear "
                      "from the calibration data.  [default: per_token; smoothquant only]"),
    click.option("--calibrate_kv", is_flag=True,
                 help="Also store calibrated int8 KV cache scales (one per key and value channel and layer, from "
                      "the calibration data) for --kv_dtype int8 --kv_scales calibrated)."),
    click.option("--act_order", is_flag=True,
                 help="GPTQ: quantize columns by decreasing Hessian diagonal (groups fixed from the original "
                      "weights first, so they stay consecutive channels and need no g_idx)."),
    seed_option,
)

dataset_option = click.option(
    "--dataset", default="corpus-test", show_default=True,
    help="corpus-test, corpus-valid (shipped splits), python-docs (shipped evaluation-only text), wikitext2 (local "
         "datasets cache) or a text file.")
float_model_option = click.option(
    "--float_model", default=None,
    help="The float reference (default: the quantized checkpoint's recorded source, or the model itself).")

benchmark_options = _stack(
    click.option("--prompt_lengths", default=None,
                 help="Comma-separated prompt lengths. Default: 4,8,16,32,64,128,256 (benchmark), "
                      "512,1024,2048,4096 (benchmark_long)."),
    click.option("--new_tokens", type=int, default=32, show_default=True, help="Tokens generated per run."),
    click.option("--repeats", type=int, default=3, show_default=True, help="Timed runs per length (median)."),
    click.option("--batch", type=int, default=None,
                 help="Prompts decoded together (rows of every call; tokens/s counts all rows). Default: 1, or the "
                      "data-parallel groups of --mesh_shape so that every group works."),
    click.option("--random_weights", is_flag=True,
                 help="--model names a shipped shape (llama-2-7b, yarn-llama-2-7b-64k, llama-3.1-8b, llama-3.2-1b, "
                      "qwen2.5-7b, smollm2-135m) or a config.json; random weights are RTN-quantized in memory with "
                      "--w_bit/--group_size (and lm_head with --lm_head/--lm_head_group_size)."),
    click.option("--profile", type=click.Path(dir_okay=False), default=None,
                 help="Write per-module prefill and per-token times to this CSV file (PyTorch modules, or the native "
                      "engine's per-layer steps)."),
    click.option("--compare_target", default=None,
                 help="Also measure this target in the same run and report the ratios. Default: cpu when --target "
                      "is not cpu; 'none' turns it off."),
)

# scale-out: decode, perplexity, accuracy, benchmark on several ranks (scale_out/)
mesh_options = _stack(
    click.option("--mesh_shape", default="1x1", show_default=True,
                 help="BxM: B data-parallel groups (each takes a share of the batch) of M tensor-parallel ranks "
                      "(heads, MLP channels and vocabulary split between them). 1x1 = one process. Without torchrun "
                      "the ranks are started here (gloo over loopback); under torchrun they join its world."),
    click.option("--pp", type=click.IntRange(min=1), default=1, show_default=True,
                 help="Pipeline stages: consecutive layer ranges, one per stage (ranks = B x M x pp)."),
    click.option("--tt_mesh", type=click.Choice(["N150", "N300", "T3K", "TG"], case_sensitive=False), default=None,
                 help="With --target tt: emulate this Tenstorrent system, one rank per chip (N150 1, N300 2, T3K 8, "
                      "TG 32); alone it runs 1xN, with --mesh_shape / --pp the mesh must have N ranks."),
    click.option("--threads_per_rank", type=click.IntRange(min=1), default=None,
                 help="Compute threads of each rank. Default: the cores of this machine / its local ranks."),
    click.option("--collective_timeout", type=click.FloatRange(min=1.0), default=300.0, show_default=True,
                 help="Seconds a rank waits for its peers in one step before the run is stopped as failed."),
)
