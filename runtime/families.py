"""The one data table of supported model families.

Every part of the toolkit that needs to know a family's module names (loading, fusion, quantization layer
groups, backends) reads them from `FAMILIES`. Supporting a new Llama-like family is a new row, not a
subclass. Module paths are relative: `layers` from the CausalLM root, everything else from one decoder layer.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ScaleGroup:
    """One AWQ scaling group: `prev_op` feeds `linears`; the loss is measured at the output of `inspect`.

    `requires` names a condition checked on the layer ("v_o_same_shape": only when v_proj's output size equals
    o_proj's input size, i.e. no GQA), or is None.
    """

    prev_op: str
    linears: tuple[str, ...]
    inspect: str
    requires: str | None = None


@dataclass(frozen=True)
class Family:
    model_type: str                 # config.json "model_type"
    model_class: str                # transformers CausalLM class name
    covers: str                     # the checkpoints this row serves, for messages and docs
    embed: str = "model.embed_tokens"
    layers: str = "model.layers"
    final_norm: str = "model.norm"
    lm_head: str = "lm_head"
    rotary: str = "model.rotary_emb"
    attn: str = "self_attn"
    mlp: str = "mlp"
    input_norm: str = "input_layernorm"
    post_attn_norm: str = "post_attention_layernorm"
    q: str = "q_proj"
    k: str = "k_proj"
    v: str = "v_proj"
    o: str = "o_proj"
    gate: str = "gate_proj"
    up: str = "up_proj"
    down: str = "down_proj"
    fused_qkv: str = "qkv_proj"      # name of the grouped q/k/v projection after fusion
    fused_gate_up: str = "gate_up_proj"
    scale_groups: tuple[ScaleGroup, ...] = field(default_factory=tuple)
    no_clip: tuple[str, ...] = ("self_attn.q_proj", "self_attn.k_proj")  # AWQ clip search skips these

    @property
    def linears(self) -> tuple[str, ...]:
        """Every Linear of one decoder layer (unfused names), in execution order."""
        a, m = self.attn, self.mlp
        return (f"{a}.{self.q}", f"{a}.{self.k}", f"{a}.{self.v}", f"{a}.{self.o}",
                f"{m}.{self.gate}", f"{m}.{self.up}", f"{m}.{self.down}")

    @property
    def input_sharing_linears(self) -> tuple[tuple[str, ...], ...]:
        """The Linears of one decoder layer in execution order, those reading one input tensor together (GPTQ
        quantizes them a tuple at a time, each tuple's inputs coming from the layer with the earlier ones
        quantized)."""
        a, m = self.attn, self.mlp
        return ((f"{a}.{self.q}", f"{a}.{self.k}", f"{a}.{self.v}"), (f"{a}.{self.o}",),
                (f"{m}.{self.gate}", f"{m}.{self.up}"), (f"{m}.{self.down}",))


_LLAMA_GROUPS = (
    ScaleGroup("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "self_attn"),
    ScaleGroup("self_attn.v_proj", ("self_attn.o_proj",), "self_attn.o_proj", requires="v_o_same_shape"),
    ScaleGroup("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"), "mlp"),
    ScaleGroup("mlp.up_proj", ("mlp.down_proj",), "mlp.down_proj"),
)

FAMILIES: dict[str, Family] = {
    "llama": Family("llama", "LlamaForCausalLM",
                    "Llama 2, Llama 3/3.1/3.2, DeepSeek-R1-Distill-Llama", scale_groups=_LLAMA_GROUPS),
    "qwen2": Family("qwen2", "Qwen2ForCausalLM",
                    "Qwen2, Qwen2.5, QwQ, DeepSeek-R1-Distill-Qwen", scale_groups=_LLAMA_GROUPS),
    "mistral": Family("mistral", "MistralForCausalLM", "Mistral", scale_groups=_LLAMA_GROUPS),
}


def supported_types() -> str:
    """Human-readable list for error messages: 'llama (Llama 2, ...), qwen2 (...), mistral (...)'."""
    return ", ".join(f"{f.model_type} ({f.covers})" for f in FAMILIES.values())
