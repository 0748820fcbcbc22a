"""Build this rank's part of a model for a mesh run: plan the mesh, read the rank's slice, pick its engine.

Engines per rank: `--target cpu`: `native` (the project's C++ decoder on the rank's slice, with the all-reduce
between layers; native_shard.py), `onnx` (ONNX Runtime segment graphs on the CPU provider; ort_shard.py) or `torch`
(the PyTorch reference; torch_shard.py); `--engine auto` takes native for quantized checkpoints when every rank's
slice can run on it, else torch; all ranks always run the same engine. `--target npu`: ONNX Runtime sessions per
rank on the --ep provider (ort_shard.py). `--target tt`: the tt emulation per chip (tt_shard.py).
"""
from __future__ import annotations

import torch.distributed as dist

from ..errors import UserError
from ..runtime.fusion import head_dim as head_dim_of
from ..runtime.model_loader import open_checkpoint
from ..runtime.quantized_model import QuantLayout
from .comm import Comm
from .partition import MeshPlan, plan_mesh
from .shard_loader import load_shard

MESH_ENGINES_BY_TARGET = {"cpu": ("auto", "native", "onnx", "torch"), "npu": ("auto",), "tt": ("auto",)}
RANDOM_WEIGHTS_ON_MESH = UserError(
    "--random_weights builds its model in one process; a mesh run reads each rank's slice from a checkpoint.",
    "Write a random-weight checkpoint first (benchmarks/scale_out.py does), or drop --mesh_shape / --pp.")


def mesh_plan_for(path, mesh) -> MeshPlan:
    """The plan of `mesh` for the checkpoint at `path` (reads its config, reads no weights); an impossible mesh is
    a UserError."""
    src = open_checkpoint(path, streamed=True, verify=False, with_tokenizer=False)
    return plan_for_config(src.config, src.family, src.quant, src.folder, mesh)


def plan_for_config(config, family, quant, folder, mesh) -> MeshPlan:
    o_group = down_group = None
    if quant is not None:
        layout = QuantLayout.from_config(quant, family, folder)
        hd = head_dim_of(config)
        if f"{family.attn}.{family.o}" in layout.modules:
            o_group = layout.spec.group(config.num_attention_heads * hd, "o_proj")
        if f"{family.mlp}.{family.down}" in layout.modules:
            down_group = layout.spec.group(config.intermediate_size, "down_proj")
    return plan_mesh(config, mesh, o_group, down_group)


def check_request(request) -> None:
    check_run_flags(request.target, request.options, request.act_dtype)


def check_run_flags(target: str, options, act_dtype: str) -> None:
    """The flags a mesh run cannot honour are UserErrors (checked before the ranks start, and by every rank)."""
    if target not in MESH_ENGINES_BY_TARGET:
        raise UserError(f"--target {target} cannot run on a mesh.",
                        f"Use --target {', '.join(MESH_ENGINES_BY_TARGET)}.")
    engines = MESH_ENGINES_BY_TARGET[target]
    if options.engine not in engines:
        raise UserError(f"--engine {options.engine} cannot run on a mesh of --target {target}.",
                        f"Use --engine {', '.join(engines)} with --mesh_shape / --pp.")
    if options.flash_attention or act_dtype == "aie":
        raise UserError("--flash_attention and --act_dtype aie select single-process PyTorch engines.",
                        "Drop them for a mesh run (each rank already runs grouped q/k/v over a static KV cache).")
    if target == "tt" and options.tt_device == "on":
        raise UserError("--tt_device on: a mesh of real Tenstorrent chips is driven by ttnn's own mesh device, which "
                        "this version does not use; a tt mesh run emulates every chip on the CPU.",
                        "Use --tt_device off (or auto) for the emulated mesh, or drop --tt_mesh / --mesh_shape to run "
                        "one card.")


def load_rank_model(request, comm: Comm, threads: int, verify: bool = True):
    """-> (the rank's model: TorchShard, NativeShard, OrtShard or TTShard, the mesh plan). Collective: every rank
    calls it. Rank 0 checks a quantized checkpoint against its manifest; the others when `verify` (ranks on other
    machines) and load no tokenizer."""
    check_request(request)
    src = open_checkpoint(request.path, streamed=True, verify=verify or comm.rank == 0,
                          with_tokenizer=comm.rank == 0)
    plan = plan_for_config(src.config, src.family, src.quant, src.folder, comm.mesh)
    shard = plan.shard(comm.rank)
    loaded = load_shard(src, request.dtype, request.act_dtype, shard, plan.head_dim)
    vocab_sizes = [b - a for a, b in plan.vocab]
    model = _rank_engine(request, loaded, shard, comm, vocab_sizes, threads, src.config.num_hidden_layers)
    model.full_config = src.config
    return model, plan


def _rank_engine(request, loaded, shard, comm: Comm, vocab_sizes: list[int], threads: int, full_layers: int):
    """The rank's engine over its slice: the target's own (npu: ONNX Runtime; tt: the tt emulation), or for the
    cpu target native / onnx / torch as --engine asks (auto: native when every rank's slice can run on it)."""
    target, engine = request.target, request.options.engine
    if target == "tt":
        from .tt_shard import TTShard

        return TTShard(loaded, shard, comm, vocab_sizes, request.options.tt_precision, full_layers)
    if target == "npu" or engine == "onnx":
        from .ort_shard import OrtShard

        return OrtShard(loaded, shard, comm, vocab_sizes, threads, request.options, target)
    problem = _native_problem(loaded) if engine in ("auto", "native") else "not asked for"
    problems: list = [None] * comm.mesh.world
    dist.all_gather_object(problems, problem, group=comm.work)
    first = next(((r, p) for r, p in enumerate(problems) if p), None)
    if engine == "native" and first is not None:
        raise UserError(f"--engine native cannot run rank {first[0]}'s slice of this model: {first[1]}.",
                        "Use --engine torch (or auto) for this mesh.")
    if first is None:
        from .native_shard import NativeShard

        return NativeShard(loaded, shard, comm, vocab_sizes, threads)
    from .torch_shard import TorchShard

    return TorchShard(loaded, shard, comm, vocab_sizes)


def _native_problem(loaded) -> str | None:
    if loaded.quant is None:
        return "the checkpoint is not quantized"
    from ..cpu_backend.native_state import native_problem

    return native_problem(loaded)
