"""How a model is cut across a mesh: which heads, MLP channels, vocabulary rows and layers each rank holds.

Mesh `BxM` with N pipeline stages (`Mesh`): global rank r = (dp * N + stage) * M + tp.

Tensor parallel (Megatron layout), per stage, for tp rank t of M:
  * Attention heads. The nkv KV groups (q = nh / nkv query heads each) are first padded with all-zero groups to
    G' >= nkv, the smallest count with M % G' == 0 or G' % M == 0. If G' % M == 0 each rank holds G'/M whole
    groups; else each group is spread over R = M / G' ranks: its q heads are padded with zero heads to a multiple
    of R and each of the R ranks holds ceil(q / R) of them plus a replica of the group's KV head. A padding head
    has zero rows in q (and in k/v for a padding group) and zero columns in o, so results are unchanged.
    `HeadShard.q_heads` / `.kv_heads` list the source head of every local head, -1 for padding.
  * q/k/v, gate/up: column parallel (output rows). o, down: row parallel (input channels), followed by an
    all-reduce. Quantized row-parallel inputs are cut on group boundaries only: down's input channels are split in
    whole groups (shards may be uneven: 148 groups on 32 ranks = 20 ranks x 5 + 12 x 4); o's in whole heads, each
    head block a whole number of groups.
  * Embedding and lm_head: vocabulary parallel (contiguous row ranges, sizes differing by at most one); the
    embedding lookup is an all-reduce of the rows each rank holds, the logits an all-gather.
  * Norms: replicated.
Pipeline: stage s holds layers `layer_ranges[s]` (consecutive, sizes differing by at most one).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError

MAX_RANKS = 256


@dataclass(frozen=True)
class Mesh:
    dp: int = 1       # data-parallel groups (B of BxM)
    tp: int = 1       # tensor-parallel ranks per stage (M of BxM)
    pp: int = 1       # pipeline stages

    @property
    def world(self) -> int:
        return self.dp * self.tp * self.pp

    @property
    def single(self) -> bool:
        return self.world == 1

    def coords(self, rank: int) -> tuple[int, int, int]:
        """Global rank -> (dp group, stage, tp rank)."""
        return rank // (self.pp * self.tp), (rank // self.tp) % self.pp, rank % self.tp

    def rank(self, dp: int, stage: int, tp: int) -> int:
        return (dp * self.pp + stage) * self.tp + tp

    def __str__(self) -> str:
        return f"{self.dp}x{self.tp}" + (f" --pp {self.pp}" if self.pp > 1 else "")


def parse_mesh(shape: str, pp: int = 1) -> Mesh:
    """`BxM` (B data-parallel groups, M tensor-parallel ranks) and N pipeline stages -> Mesh."""
    parts = str(shape).lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise UserError(f"--mesh_shape {shape!r} is not of the form BxM.",
                        "Use e.g. --mesh_shape 1x2 (2 tensor-parallel ranks) or 2x1 (2 data-parallel groups).")
    mesh = Mesh(int(parts[0]), int(parts[1]), int(pp))
    if min(mesh.dp, mesh.tp, mesh.pp) < 1:
        raise UserError(f"--mesh_shape {shape} --pp {pp} has a zero dimension.", "Every dimension must be 1 or more.")
    if mesh.world > MAX_RANKS:
        raise UserError(f"--mesh_shape {shape} --pp {pp} asks for {mesh.world} ranks; the limit is {MAX_RANKS}.",
                        "Use fewer ranks.")
    return mesh


TT_SYSTEMS = {"N150": 1, "N300": 2, "T3K": 8, "TG": 32}     # chips of a Tenstorrent system (tt-metal's names)


def resolve_mesh(shape: str, pp: int, tt_mesh: str | None, target: str) -> Mesh:
    """The run's mesh from --mesh_shape, --pp and --tt_mesh. `--tt_mesh NAME` (target tt) emulates that system's
    chips, one rank each: alone it means 1xN (tensor parallel over the chips, as tt-metal's multi-chip demos run);
    with --mesh_shape / --pp the mesh must use exactly N ranks (e.g. TG as --mesh_shape 8x4)."""
    mesh = parse_mesh(shape, pp)
    if tt_mesh is None:
        return mesh
    name = str(tt_mesh).upper()
    if name not in TT_SYSTEMS:
        raise UserError(f"--tt_mesh {tt_mesh!r} is not a Tenstorrent system this tool emulates.",
                        f"Use one of: {', '.join(f'{k} ({v} chips)' for k, v in TT_SYSTEMS.items())}.")
    if target != "tt":
        raise UserError(f"--tt_mesh names the chips of a Tenstorrent system; it needs --target tt (got --target "
                        f"{target}).", "Add --target tt, or use --mesh_shape / --pp for other targets.")
    chips = TT_SYSTEMS[name]
    if mesh.single:
        return Mesh(1, chips, 1)
    if mesh.world != chips:
        raise UserError(f"--tt_mesh {name} has {chips} chips, but --mesh_shape {mesh.dp}x{mesh.tp} --pp {mesh.pp} "
                        f"asks for {mesh.world} ranks.",
                        f"Give a mesh of {chips} ranks (B x M x pp = {chips}), or drop --mesh_shape / --pp to run "
                        f"1x{chips}.")
    return mesh


@dataclass(frozen=True)
class HeadShard:
    q_heads: tuple[int, ...]     # source query head of each local head, -1 = zero padding
    kv_heads: tuple[int, ...]    # source KV head of each local KV head, -1 = zero padding

    def kv_of_local(self, local_head: int) -> int:
        """The local KV head a local query head reads (contiguous GQA groups)."""
        return local_head // (len(self.q_heads) // len(self.kv_heads))


def _padded_groups(nkv: int, tp: int) -> int:
    g = nkv
    while not (g % tp == 0 or tp % g == 0):
        g += 1
    return g


def head_shards(heads: int, kv_heads: int, tp: int) -> list[HeadShard]:
    """The heads each of `tp` ranks holds (see the module docstring)."""
    q = heads // kv_heads
    groups = _padded_groups(kv_heads, tp)
    shards = []
    for t in range(tp):
        if groups % tp == 0:
            mine = range(t * groups // tp, (t + 1) * groups // tp)
            qs = [g * q + j if g < kv_heads else -1 for g in mine for j in range(q)]
            kvs = [g if g < kv_heads else -1 for g in mine]
        else:
            spread = tp // groups
            g, part = divmod(t, spread)
            per_rank = -(-q // spread)
            qs = [g * q + j if (j < q and g < kv_heads) else -1
                  for j in range(part * per_rank, (part + 1) * per_rank)]
            kvs = [g if g < kv_heads else -1]
        shards.append(HeadShard(tuple(qs), tuple(kvs)))
    return shards


def split_sizes(total: int, parts: int) -> list[int]:
    """`total` units in `parts` contiguous shares, the first `total % parts` one larger."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def ranges(total: int, parts: int, unit: int = 1) -> list[tuple[int, int]]:
    """[start, end) of each share of `total` (a multiple of `unit`) cut in whole units."""
    out, start = [], 0
    for n in split_sizes(total // unit, parts):
        out.append((start, start + n * unit))
        start += n * unit
    return out


def runs(sources: list[int], width: int) -> list[tuple[int | None, int]]:
    """Blocks of `width` rows (source block index or -1 for zeros) -> merged runs (source start or None, length)."""
    out: list[tuple[int | None, int]] = []
    for s in sources:
        start = None if s < 0 else s * width
        if out and ((out[-1][0] is None and start is None) or
                    (out[-1][0] is not None and start is not None and out[-1][0] + out[-1][1] == start)):
            out[-1] = (out[-1][0], out[-1][1] + width)
        else:
            out.append((start, width))
    return out


@dataclass(frozen=True)
class RankShard:
    """What one rank holds."""
    dp: int
    stage: int
    tp: int
    layers: tuple[int, int]               # [first, end) of the stage
    heads: HeadShard
    ffn: tuple[int, int]                  # [start, end) of the MLP channels
    vocab: tuple[int, int]                # [start, end) of the embedding / lm_head rows
    first_stage: bool
    last_stage: bool

    def key(self) -> str:
        """What the slice holds (not where it runs): the layout key of the caches derived from it."""
        return (f"layers {self.layers[0]}-{self.layers[1]}; q heads {list(self.heads.q_heads)}; kv heads "
                f"{list(self.heads.kv_heads)}; mlp {self.ffn[0]}-{self.ffn[1]}; vocab {self.vocab[0]}-"
                f"{self.vocab[1]}; embed {self.first_stage}; head {self.last_stage}")


@dataclass(frozen=True)
class MeshPlan:
    mesh: Mesh
    head_dim: int
    heads: list[HeadShard]                # per tp rank
    ffn: list[tuple[int, int]]            # per tp rank
    vocab: list[tuple[int, int]]          # per tp rank
    layer_ranges: list[tuple[int, int]]   # per stage

    def shard(self, rank: int) -> RankShard:
        dp, stage, tp = self.mesh.coords(rank)
        return RankShard(dp, stage, tp, self.layer_ranges[stage], self.heads[tp], self.ffn[tp], self.vocab[tp],
                         stage == 0, stage == self.mesh.pp - 1)

    def describe(self, heads: int, kv_heads: int) -> str:
        """One line on the layout, e.g. for the run's stderr banner."""
        local_q, local_kv = len(self.heads[0].q_heads), len(self.heads[0].kv_heads)
        pad_q = local_q * self.mesh.tp - heads
        kv_total = sum(len(h.kv_heads) for h in self.heads)
        sizes = sorted({b - a for a, b in self.ffn})
        return (f"mesh {self.mesh.dp}x{self.mesh.tp}, {self.mesh.pp} stage(s), {self.mesh.world} ranks: "
                f"{local_q} query heads per rank ({pad_q} padding heads in all), {local_kv} KV head(s) per rank "
                f"({kv_total} held for {kv_heads}), MLP channels per rank {'/'.join(map(str, sizes))}, layers per "
                f"stage {'/'.join(str(b - a) for a, b in self.layer_ranges)}")


def plan_mesh(config, mesh: Mesh, o_group: int | None = None, down_group: int | None = None) -> MeshPlan:
    """Cut the model of transformers `config` over `mesh`; `o_group` / `down_group`: the group sizes (input
    channels per group) of quantized o_proj / down_proj, None when float. An impossible mesh is a UserError."""
    from ..runtime.fusion import head_dim as head_dim_of

    nh, nkv, hd = config.num_attention_heads, config.num_key_value_heads, head_dim_of(config)
    F, V, L = config.intermediate_size, config.vocab_size, config.num_hidden_layers
    tp, label = mesh.tp, f"--mesh_shape {mesh.dp}x{mesh.tp}"
    heads = head_shards(nh, nkv, tp)
    padded = len(heads[0].q_heads) * tp
    if padded > 2 * nh:
        raise UserError(f"{label}: spreading {nh} query heads in {nkv} KV groups over {tp} ranks needs {padded} "
                        "heads with padding, more than twice the real ones (most ranks would compute padding).",
                        f"Use fewer tensor-parallel ranks, or a number that divides {nkv} or is a multiple of it.")
    if o_group is not None and tp > 1 and o_group >= nh * hd:
        raise UserError(f"{label}: o_proj is quantized with one group per output channel (group_size -1), so its "
                        "input channels cannot be split between ranks.",
                        "Use --mesh_shape Bx1 (data parallel and --pp still work), or quantize with a group size.")
    if o_group is not None and tp > 1:
        for shard in heads:
            for start, length in runs(list(shard.q_heads), hd):
                if (start or 0) % o_group or length % o_group:
                    raise UserError(f"{label}: o_proj's input channels cannot be cut between ranks on its group "
                                    f"boundaries (head_dim {hd}, group size {o_group}).",
                                    "Use a tensor-parallel size that gives every rank whole KV groups, or quantize "
                                    "with a group size that divides head_dim.")
    unit = down_group or 1
    if F // unit < tp:
        what = (f"{F // unit} group(s) of {unit} input channels" if down_group else f"{F} channels")
        raise UserError(f"{label}: down_proj has {what}, fewer than the {tp} tensor-parallel ranks to split them "
                        "between.", "Use fewer tensor-parallel ranks" + (
                            ", or quantize with a smaller group size (group_size -1 cannot be split)."
                            if down_group else "."))
    if mesh.pp > L:
        raise UserError(f"--pp {mesh.pp} asks for more pipeline stages than the model's {L} layers.",
                        f"Use --pp {L} or less.")
    if V < tp:
        raise UserError(f"{label}: the vocabulary of {V} rows cannot be split over {tp} ranks.",
                        "Use fewer tensor-parallel ranks.")
    return MeshPlan(mesh, hd, heads, ranges(F, tp, unit), ranges(V, tp), ranges(L, mesh.pp))
