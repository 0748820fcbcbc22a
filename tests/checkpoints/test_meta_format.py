"""Meta's original format (consolidated.*.pth + params.json + tokenizer.model) converts on load, exactly."""
from __future__ import annotations

import json

import pytest
import torch
import transformers

from edgeawq.runtime.model_loader import load_model

from ..conftest import make_config

CORPUS = "The hacker ethic holds that information sharing is a powerful good. " * 50


def to_meta_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Inverse of the rotate-half reordering: HF row (h, p, j) -> Meta row (h, 2j + p)."""
    rows, cols = w.shape
    d = rows // n_heads
    out = torch.empty_like(w)
    for h in range(n_heads):
        for j in range(d // 2):
            for p in range(2):
                out[h * d + 2 * j + p] = w[h * d + p * (d // 2) + j]
    return out


def write_meta_checkpoint(path, hf_model, config, n_shards: int):
    sd = hf_model.state_dict()
    nh, nkv = config.num_attention_heads, config.num_key_value_heads
    meta = {"tok_embeddings.weight": sd["model.embed_tokens.weight"], "norm.weight": sd["model.norm.weight"],
            "output.weight": sd["lm_head.weight"]}
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        meta[f"layers.{i}.attention.wq.weight"] = to_meta_rows(sd[p + "self_attn.q_proj.weight"], nh)
        meta[f"layers.{i}.attention.wk.weight"] = to_meta_rows(sd[p + "self_attn.k_proj.weight"], nkv)
        meta[f"layers.{i}.attention.wv.weight"] = sd[p + "self_attn.v_proj.weight"]
        meta[f"layers.{i}.attention.wo.weight"] = sd[p + "self_attn.o_proj.weight"]
        meta[f"layers.{i}.feed_forward.w1.weight"] = sd[p + "mlp.gate_proj.weight"]
        meta[f"layers.{i}.feed_forward.w3.weight"] = sd[p + "mlp.up_proj.weight"]
        meta[f"layers.{i}.feed_forward.w2.weight"] = sd[p + "mlp.down_proj.weight"]
        meta[f"layers.{i}.attention_norm.weight"] = sd[p + "input_layernorm.weight"]
        meta[f"layers.{i}.ffn_norm.weight"] = sd[p + "post_attention_layernorm.weight"]
    # Model-parallel split as Meta's Llama 2 code does it: column-parallel on dim 0, row-parallel and the
    # token embedding on dim 1, norms replicated.
    shards = [{} for _ in range(n_shards)]
    for name, t in meta.items():
        if t.dim() == 1:
            parts = [t] * n_shards
        elif any(k in name for k in ("wo", "w2", "tok_embeddings")):
            parts = t.chunk(n_shards, dim=1)
        else:
            parts = t.chunk(n_shards, dim=0)
        for s, part in zip(shards, parts):
            s[name] = part.clone()
    for i, s in enumerate(shards):
        torch.save(s, path / f"consolidated.{i:02d}.pth")
    (path / "params.json").write_text(json.dumps({
        "dim": config.hidden_size, "n_layers": config.num_hidden_layers, "n_heads": nh, "n_kv_heads": nkv,
        "vocab_size": -1, "multiple_of": 32, "norm_eps": config.rms_norm_eps, "rope_theta": 10000.0}))


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
    import sentencepiece as spm

    root = tmp_path_factory.mktemp("spm")
    (root / "text.txt").write_text(CORPUS)
    spm.SentencePieceTrainer.train(input=str(root / "text.txt"), model_prefix=str(root / "tok"), vocab_size=60,
                                   model_type="bpe", bos_id=1, eos_id=2, unk_id=0, pad_id=-1,
                                   minloglevel=2)
    return root / "tok.model"


@pytest.mark.parametrize("n_shards", [1, 2])
def test_meta_checkpoint_converts_to_identical_logits(tmp_path, spm_model, n_shards):
    config = make_config("llama2", num_key_value_heads=2, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(1)
    hf = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0.0, 0.2)
    write_meta_checkpoint(tmp_path, hf, config, n_shards)
    (tmp_path / "tokenizer.model").write_bytes(spm_model.read_bytes())
    loaded = load_model(tmp_path)
    ids = torch.tensor([[1, 9, 20, 33, 41, 50, 7]])
    with torch.no_grad():
        assert torch.allclose(loaded.model(input_ids=ids).logits, hf(input_ids=ids).logits, atol=1e-5, rtol=0)
    assert loaded.config.intermediate_size == config.intermediate_size
    assert not loaded.config.tie_word_embeddings
    encoded = loaded.tokenizer("The hacker ethic")["input_ids"]
    assert encoded[0] == 1 and loaded.tokenizer.decode(encoded, skip_special_tokens=True) == "The hacker ethic"


def test_llama3_tiktoken_tokenizer_converts(tmp_path):
    import base64

    merges = [b"th", b"he", b"the", b" t", b" the", b"ha", b"ck", b"er", b"hack", b"hacker", b" hacker"]
    ranks = [bytes([b]) for b in range(256)] + merges
    (tmp_path / "tokenizer.model").write_text(
        "".join(f"{base64.b64encode(tok).decode()} {rank}\n" for rank, tok in enumerate(ranks)))
    config = make_config("llama3", vocab_size=len(ranks) + 256, tie_word_embeddings=False)
    hf = transformers.LlamaForCausalLM(config).eval()
    write_meta_checkpoint(tmp_path, hf, config, 1)
    loaded = load_model(tmp_path)
    tok = loaded.tokenizer
    ids = tok("the hacker")["input_ids"]
    assert ids == [len(ranks), ranks.index(b"the"), ranks.index(b" hacker")]
    assert tok.decode(ids, skip_special_tokens=True) == "the hacker"
    assert tok.convert_tokens_to_ids("<|eot_id|>") == len(ranks) + 9
    assert tok.convert_tokens_to_ids("<|reserved_special_token_246|>") == len(ranks) + 255
    assert loaded.config.eos_token_id == [len(ranks) + 1, len(ranks) + 8, len(ranks) + 9]
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert chat.startswith("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>")
