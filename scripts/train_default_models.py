"""Train the embedded default models (default_models/{llama,qwen2}) on the shipped corpus, from scratch.

Seeded and deterministic on one machine (same torch build, same thread count). Steps:
  1. A byte-level BPE tokenizer (vocab 4096) is trained on data/corpus/train.txt with the `tokenizers`
     package; it adds <s> in front of every encoded text (like Llama) and carries a chat template.
  2. For each model: a transformers config (Llama-3.2-like with GQA, tied embeddings and llama3 RoPE
     scaling; Qwen2-like with q/k/v bias, GQA and untied lm_head), random init, AdamW with warm-up and
     cosine decay on random 256-token windows of the tokenized train split (half of the windows start
     with <s>), batch 16, fp32 on the CPU.
  3. The model is saved as bf16 safetensors with its tokenizer, and `training_report.json` records the
     config, the step count, the wall time, and the test-split perplexity of the model next to the unigram
     perplexity of the same split (add-one smoothed unigram counts from the train split).

Usage: python scripts/train_default_models.py [--steps 1000] [--only llama|qwen2] [--out default_models] [--rescore]
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast, Qwen2Config

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "data" / "corpus"
VOCAB = 4096
SEQ = 256
BATCH = 16
SEED = 1234
SPECIAL = ["<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def model_configs() -> dict[str, object]:
    common = dict(
        vocab_size=VOCAB, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=2048,
        bos_token_id=0, eos_token_id=1, pad_token_id=2, rms_norm_eps=1e-5, dtype="bfloat16",
    )
    llama = LlamaConfig(
        **common, tie_word_embeddings=True,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 4.0,
                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 512},
    )
    qwen2 = Qwen2Config(**common, tie_word_embeddings=False,
                        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})
    return {"llama": llama, "qwen2": qwen2}


def train_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train([str(CORPUS / "train.txt")], trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   additional_special_tokens=SPECIAL[3:], chat_template=CHAT_TEMPLATE,
                                   model_max_length=2048)


def encode_split(tokenizer: PreTrainedTokenizerFast, split: str) -> torch.Tensor:
    text = (CORPUS / f"{split}.txt").read_text(encoding="utf-8")
    return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)


def batch_windows(stream: torch.Tensor, gen: torch.Generator, bos: int) -> torch.Tensor:
    starts = torch.randint(0, stream.numel() - SEQ - 1, (BATCH,), generator=gen)
    rows = torch.stack([stream[s:s + SEQ + 1] for s in starts.tolist()])  # (B, SEQ+1)
    with_bos = torch.rand(BATCH, generator=gen) < 0.5
    rows[with_bos, 0] = bos
    return rows


@torch.no_grad()
def perplexity(model: torch.nn.Module, stream: torch.Tensor, seqlen: int = 512) -> float:
    model.eval()
    nll, count = 0.0, 0
    for start in range(0, stream.numel() - seqlen + 1, seqlen):
        ids = stream[start:start + seqlen][None]
        logits = model(input_ids=ids).logits.float()
        loss = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="sum")
        nll, count = nll + loss.item(), count + seqlen - 1
    model.train()
    return math.exp(nll / count)


def unigram_perplexity(train: torch.Tensor, test: torch.Tensor) -> float:
    counts = torch.bincount(train, minlength=VOCAB).double() + 1.0
    logp = torch.log(counts / counts.sum())
    return math.exp(-logp[test].mean().item())


def train_one(name: str, config, tokenizer, train: torch.Tensor, test: torch.Tensor, steps: int, out: Path) -> dict:
    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)) * 0.95 + 0.05)
    gen = torch.Generator().manual_seed(SEED)
    t0 = time.time()
    for step in range(steps):
        rows = batch_windows(train, gen, tokenizer.bos_token_id)
        logits = model(input_ids=rows[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), rows[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            print(json.dumps({"model": name, "step": step, "loss": round(loss.item(), 4),
                              "elapsed_s": round(time.time() - t0, 1)}), flush=True)
    train_s = time.time() - t0
    with torch.no_grad():  # evaluate the weights as shipped (bf16), with fp32 math and fp32 RoPE buffers
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    ppl = perplexity(model, test)
    model = model.to(torch.bfloat16)
    target = out / name
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    report = {
        "model": name, "model_type": config.model_type, "parameters": sum(p.numel() for p in model.parameters()),
        "steps": steps, "batch": BATCH, "seqlen": SEQ, "seed": SEED, "train_seconds": round(train_s, 1),
        "threads": torch.get_num_threads(), "train_tokens_seen": steps * BATCH * SEQ,
        "test_perplexity": round(ppl, 3), "test_unigram_perplexity": round(unigram_perplexity(train, test), 3),
        "perplexity_protocol": "data/corpus/test.txt tokenized once without <s>, non-overlapping 512-token "
                               "windows, bf16 weights evaluated in fp32",
    }
    (target / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report), flush=True)
    return report


def rescore(out: Path, name: str) -> dict:
    """Recompute the perplexities of a saved model (as shipped: bf16 file, fp32 math) into its report."""
    from transformers import AutoModelForCausalLM as Auto

    target = out / name
    tokenizer = PreTrainedTokenizerFast.from_pretrained(target)
    train, test = encode_split(tokenizer, "train"), encode_split(tokenizer, "test")
    model = Auto.from_pretrained(target, dtype=torch.float32)
    report = json.loads((target / "training_report.json").read_text())
    report.update(test_perplexity=round(perplexity(model, test), 3),
                  test_unigram_perplexity=round(unigram_perplexity(train, test), 3))
    (target / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report), flush=True)
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--only", choices=["llama", "qwen2"])
    ap.add_argument("--out", type=Path, default=ROOT / "default_models")
    ap.add_argument("--rescore", action="store_true",
                    help="do not train: recompute the perplexities in the saved models' reports")
    args = ap.parse_args()
    torch.set_num_threads(2)
    if args.rescore:
        for name in model_configs():
            if args.only in (None, name):
                rescore(args.out, name)
        return
    tokenizer = train_tokenizer()
    train, test = encode_split(tokenizer, "train"), encode_split(tokenizer, "test")
    print(json.dumps({"train_tokens": train.numel(), "test_tokens": test.numel()}), flush=True)
    for name, config in model_configs().items():
        if args.only in (None, name):
            train_one(name, config, tokenizer, train, test, args.steps, args.out)


if __name__ == "__main__":
    main()
