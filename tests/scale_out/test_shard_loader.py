"""Each rank's slice read from the checkpoint: put back together, the slices are the checkpoint's tensors."""
from __future__ import annotations

import pytest
import torch

from edgeawq.runtime.model_loader import open_checkpoint
from edgeawq.runtime.quantized_model import QuantLayout
from edgeawq.scale_out.partition import Mesh
from edgeawq.scale_out.rank_model import plan_for_config
from edgeawq.scale_out.shard_loader import read_block, shard_state


def slices(path: str, mesh: Mesh):
    src = open_checkpoint(path, streamed=True)
    plan = plan_for_config(src.config, src.family, src.quant, src.folder, mesh)
    layout = QuantLayout.from_config(src.quant, src.family, src.folder) if src.quant else None
    states = [shard_state(src.state, src.config, src.family, layout, plan.shard(r), plan.head_dim)
              for r in range(mesh.world)]
    return src, plan, states


@pytest.mark.parametrize("name, tp", [("qwen7b-heads-w4g32", 8), ("qwen7b-heads-w4g32", 3), ("llama", 4),
                                      ("qwen2-w4g64", 2)])
def test_slices_put_together_are_the_checkpoint(mesh_models, name, tp):
    src, plan, states = slices(mesh_models[name], Mesh(1, tp, 1))
    full = open_checkpoint(mesh_models[name]).state                 # every tensor, memory-mapped
    hd, f = plan.head_dim, src.family
    q_suffix = ".packed" if src.quant else ".weight"
    for part in ([q_suffix, ".scales", ".zeros"] if src.quant else [".weight"]):
        q = f"model.layers.0.self_attn.q_proj{part}"
        rows = {}
        for shard, state in zip(plan.heads, states):
            for local, head in enumerate(shard.q_heads):
                block = state[q][local * hd:(local + 1) * hd]
                if head < 0:
                    assert not block.any()                             # padding heads: zero rows
                else:
                    rows[head] = block
        assert torch.equal(torch.cat([rows[h] for h in sorted(rows)]), full[q])
        down = f"model.layers.1.mlp.down_proj{part}"
        assert torch.equal(torch.cat([s[down] for s in states], dim=1), full[down])
        up = f"model.layers.1.mlp.up_proj{part}"
        assert torch.equal(torch.cat([s[up] for s in states]), full[up])
    embed = "model.embed_tokens.weight"
    assert torch.equal(torch.cat([s[embed] for s in states]), full[embed].to(states[0][embed].dtype))
    if "qwen" in name:                                                # the q/k/v biases follow their rows
        bias = "model.layers.0.self_attn.k_proj.bias"
        kv = {k: s[bias][i * hd:(i + 1) * hd] for sh, s in zip(plan.heads, states) for i, k in enumerate(sh.kv_heads)
              if k >= 0}
        assert torch.equal(torch.cat([kv[k] for k in sorted(kv)]), full[bias])


def test_pipeline_stages_hold_only_their_layers_and_ends(mesh_models):
    _, _, states = slices(mesh_models["llama"], Mesh(1, 1, 2))
    first, last = states
    assert "model.embed_tokens.weight" in first and "model.norm.weight" not in first
    assert "model.embed_tokens.weight" not in last and "lm_head.weight" in last        # tied: the embedding rows
    assert {k.split(".")[2] for k in first if k.startswith("model.layers")} == {"0", "1"}
    assert {k.split(".")[2] for k in last if k.startswith("model.layers")} == {"0", "1"}   # renumbered from 0


def test_streamed_ranges_equal_the_mapped_tensor(mesh_models):
    streamed = open_checkpoint(mesh_models["qwen7b-heads"], streamed=True).state
    mapped = open_checkpoint(mesh_models["qwen7b-heads"]).state
    name = "model.layers.0.mlp.down_proj.weight"
    rows, cols = [(3, 5), (None, 2), (100, 1)], [(0, 7), (None, 3), (640, 64)]
    got = read_block(streamed, name, rows, cols)
    ref = read_block(mapped, name, rows, cols)
    assert torch.equal(got, ref) and got.shape == (8, 74)
    assert torch.equal(got[:5, :7], mapped[name][3:8, :7]) and not got[5:7].any() and not got[:, 7:10].any()


def test_a_tensor_missing_from_the_checkpoint_is_a_user_error(mesh_models):
    from edgeawq.errors import UserError

    src = open_checkpoint(mesh_models["llama-w4g64"], streamed=True)
    plan = plan_for_config(src.config, src.family, src.quant, src.folder, Mesh(1, 2, 1))
    layout = QuantLayout.from_config(src.quant, src.family, src.folder)
    del src.state["model.layers.1.mlp.down_proj.scales"]
    with pytest.raises(UserError, match="down_proj.scales"):
        shard_state(src.state, src.config, src.family, layout, plan.shard(1), plan.head_dim)
