"""The mesh plan: head padding and KV replication, uneven MLP and vocabulary shares, impossible meshes."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from edgeawq.errors import UserError
from edgeawq.scale_out.partition import Mesh, head_shards, parse_mesh, plan_mesh, ranges, runs


def qwen7b(**overrides):
    base = dict(num_attention_heads=28, num_key_value_heads=4, head_dim=128, hidden_size=3584,
                intermediate_size=18944, vocab_size=152064, num_hidden_layers=28)
    return SimpleNamespace(**{**base, **overrides})


def check_cover(shards, heads, kv_heads):
    """Every real head is held exactly once; each rank's query heads read KV heads it holds."""
    q = heads // kv_heads
    held = sorted(h for s in shards for h in s.q_heads if h >= 0)
    assert held == list(range(heads))
    for s in shards:
        assert len(s.q_heads) % len(s.kv_heads) == 0
        for local, h in enumerate(s.q_heads):
            if h >= 0:
                assert s.kv_heads[s.kv_of_local(local)] == h // q


@pytest.mark.parametrize("tp", [1, 2, 3, 4, 5, 6, 7, 8, 16, 32])
def test_heads_are_padded_and_kv_replicated_for_the_qwen7b_layout(tp):
    shards = head_shards(28, 4, tp)
    check_cover(shards, 28, 4)
    assert len({len(s.q_heads) for s in shards}) == 1           # every rank the same local shape
    assert len({len(s.kv_heads) for s in shards}) == 1


def test_the_seed_meshes_of_the_qwen7b_layout():
    eight = head_shards(28, 4, 8)                                  # 2 ranks per KV group, 4 heads each
    assert [len(s.q_heads) for s in eight] == [4] * 8
    assert eight[0].q_heads == (0, 1, 2, 3) and eight[1].q_heads == (4, 5, 6, -1)
    assert [s.kv_heads for s in eight] == [(0,), (0,), (1,), (1,), (2,), (2,), (3,), (3,)]
    thirty_two = head_shards(28, 4, 32)                            # 8 ranks per group, one head each
    assert sum(s.q_heads == (-1,) for s in thirty_two) == 4
    four = head_shards(28, 4, 4)                                   # whole groups, no padding
    assert four[1].q_heads == tuple(range(7, 14)) and four[1].kv_heads == (1,)
    two = head_shards(28, 4, 2)
    assert two[1].kv_heads == (2, 3)


def test_mha_models_pad_whole_groups():
    three = head_shards(32, 32, 3)                                 # Llama-2-7B heads on 3 ranks: 33 groups
    check_cover(three, 32, 32)
    assert [len(s.q_heads) for s in three] == [11, 11, 11] and three[2].kv_heads[-1] == -1


def test_uneven_mlp_shares_keep_whole_groups():
    plan = plan_mesh(qwen7b(), Mesh(1, 32, 1), o_group=128, down_group=128)
    sizes = [(b - a) // 128 for a, b in plan.ffn]
    assert sizes == [5] * 20 + [4] * 12 and plan.ffn[-1][1] == 18944
    assert all(a % 128 == 0 for a, _ in plan.ffn)
    assert sum(b - a for a, b in plan.vocab) == 152064


def test_layer_ranges_and_rank_coordinates():
    mesh = Mesh(2, 4, 3)
    assert mesh.world == 24 and mesh.coords(mesh.rank(1, 2, 3)) == (1, 2, 3)
    plan = plan_mesh(qwen7b(), mesh, 128, 128)
    assert plan.layer_ranges == [(0, 10), (10, 19), (19, 28)]
    shard = plan.shard(mesh.rank(1, 2, 0))
    assert shard.last_stage and not shard.first_stage and shard.layers == (19, 28)


def test_odd_tensor_parallel_sizes_are_possible_by_padding():
    plan = plan_mesh(qwen7b(), Mesh(1, 3, 1), 128, 128)            # 4 KV groups padded to 6, 2 per rank
    assert [len(h.kv_heads) for h in plan.heads] == [2, 2, 2] and plan.heads[2].kv_heads == (-1, -1)


def test_runs_merge_neighbouring_blocks():
    assert runs([0, 1, 2, -1, -1, 5], 4) == [(0, 12), (None, 8), (20, 4)]
    assert ranges(10, 3) == [(0, 4), (4, 7), (7, 10)]


@pytest.mark.parametrize("config, mesh, groups, words", [
    (qwen7b(intermediate_size=256), Mesh(1, 4, 1), (128, 128), "down_proj"),
    (qwen7b(), Mesh(1, 8, 1), (256, 128), "o_proj"),                # a group spans two heads: padding splits it
    (qwen7b(num_attention_heads=4, num_key_value_heads=2), Mesh(1, 16, 1), (128, 128), "twice"),
    (qwen7b(), Mesh(1, 1, 29), (128, 128), "--pp"),
    (qwen7b(), Mesh(1, 2, 1), (-1, -1), "group_size -1"),
    (qwen7b(), Mesh(1, 2, 1), (128, -1), "group_size -1"),
])
def test_impossible_meshes_are_refused_with_the_reason(config, mesh, groups, words):
    o_group, down_group = groups
    o_group = config.num_attention_heads * config.head_dim if o_group == -1 else o_group
    down_group = config.intermediate_size if down_group == -1 else down_group
    with pytest.raises(UserError, match=words):
        plan_mesh(config, mesh, o_group, down_group)


@pytest.mark.parametrize("text", ["2", "1x", "axb", "0x2", "1x2x3"])
def test_bad_mesh_shapes_are_user_errors(text):
    with pytest.raises(UserError):
        parse_mesh(text)
    assert parse_mesh("2X4", 2) == Mesh(2, 4, 2)
