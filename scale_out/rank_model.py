"""Build this rank's part of a model for a mesh run: plan the mesh, read the rank's slice, pick its engine.

Engines per rank (`--target cpu`): `native` (the project's C++ decoder on the rank's slice, with the all-reduce
between layers; native_shard.py) or `torch` (the PyTorch reference; torch_shard.py). `--engine auto` takes native
for quantized checkpoints when every rank's slice can run on it, else torch; all ranks always run the same engine.
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

MESH_ENGINES = ("auto", "native", "torch")
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
    if target != "cpu":
        raise UserError(f"--mesh_shape / --pp run on --target cpu only in this version (got --target {target}).",
                        "Use --target cpu for a mesh run, or drop --mesh_shape / --pp.")
    if options.engine not in MESH_ENGINES:
        raise UserError(f"--engine {options.engine} cannot run on a mesh.",
                        f"Use --engine {', '.join(MESH_ENGINES)} with --mesh_shape / --pp.")
    if options.flash_attention or act_dtype == "aie":
        raise UserError("--flash_attention and --act_dtype aie select single-process PyTorch engines.",
                        "Drop them for a mesh run (each rank already runs grouped q/k/v over a static KV cache).")


def load_rank_model(request, comm: Comm, threads: int, verify: bool = True):
    """-> (the rank's model: TorchShard or NativeShard, the mesh plan). Collective: every rank calls it. Rank 0
    checks a quantized checkpoint against its manifest; the others when `verify` (ranks on other machines) and
    load no tokenizer."""
    check_request(request)
    src = open_checkpoint(request.path, streamed=True, verify=verify or comm.rank == 0,
                          with_tokenizer=comm.rank == 0)
    plan = plan_for_config(src.config, src.family, src.quant, src.folder, comm.mesh)
    shard = plan.shard(comm.rank)
    loaded = load_shard(src, request.dtype, request.act_dtype, shard, plan.head_dim)
    vocab_sizes = [b - a for a, b in plan.vocab]
    problem = _native_problem(loaded) if request.options.engine in ("auto", "native") else "not asked for"
    problems: list = [None] * comm.mesh.world
    dist.all_gather_object(problems, problem, group=comm.work)
    first = next(((r, p) for r, p in enumerate(problems) if p), None)
    if request.options.engine == "native" and first is not None:
        raise UserError(f"--engine native cannot run rank {first[0]}'s slice of this model: {first[1]}.",
                        "Use --engine torch (or auto) for this mesh.")
    if first is None:
        from .native_shard import NativeShard

        model = NativeShard(loaded, shard, comm, vocab_sizes, threads)
    else:
        from .torch_shard import TorchShard

        model = TorchShard(loaded, shard, comm, vocab_sizes)
    sizes: list = [None] * comm.mesh.world
    dist.all_gather_object(sizes, model.weight_bytes, group=comm.work)
    model.weight_bytes_total = sum(sizes[:comm.mesh.tp * comm.mesh.pp])        # one data-parallel replica
    model.full_config = src.config
    return model, plan


def _native_problem(loaded) -> str | None:
    if loaded.quant is None:
        return "the checkpoint is not quantized"
    from ..cpu_backend.native_state import native_problem

    return native_problem(loaded)
