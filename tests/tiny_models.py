"""Tiny transformers models with each fine-tuning method attached, for the capture tests.

Also imported by ``ddp_train.py`` (the torchrun script), so it stays free of pytest.
"""

from __future__ import annotations

import copy

import torch
import transformers as tf
from baichuan import BaichuanConfig, BaichuanForCausalLM
from peft import AdaLoraConfig, LoraConfig, get_peft_model
from torch import nn
from transformers.pytorch_utils import Conv1D

METHODS = ("ft", "lora", "pissa", "dora", "adalora", "sorsa")
ARCH_TARGETS = {"llama": ("q_proj", "v_proj"), "gpt2": ("c_attn",), "bert": ("query", "value")}
VOCAB = 64
SMALL = {"vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
         "num_attention_heads": 4, "max_position_embeddings": 64}  # fmt: skip
GQA = SMALL | {"num_key_value_heads": 2}
FALCON = {
    k: v for k, v in SMALL.items() if k not in ("intermediate_size", "max_position_embeddings")
}
# Every architecture of the registry, 2 blocks each: (config class, model class, config values).
ARCHS = {
    "llama": (tf.LlamaConfig, tf.LlamaForCausalLM,
              GQA | {"hidden_size": 64, "intermediate_size": 96}),
    "mistral": (tf.MistralConfig, tf.MistralForCausalLM, GQA),
    "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM, GQA),
    "gemma": (tf.GemmaConfig, tf.GemmaForCausalLM, GQA | {"head_dim": 8}),
    "bert": (tf.BertConfig, tf.BertModel, SMALL),
    "roberta": (tf.RobertaConfig, tf.RobertaModel, SMALL),
    "t5": (tf.T5Config, tf.T5Model, {"vocab_size": VOCAB, "d_model": 32, "d_kv": 8, "d_ff": 48,
                                     "num_layers": 2, "num_heads": 4}),
    "opt": (tf.OPTConfig, tf.OPTForCausalLM, SMALL | {"ffn_dim": 48, "word_embed_proj_dim": 32}),
    "gpt2": (tf.GPT2Config, tf.GPT2Model,
             {"vocab_size": VOCAB, "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 64,
              "bos_token_id": 0, "eos_token_id": 0}),
    "gptj": (tf.GPTJConfig, tf.GPTJForCausalLM, {"vocab_size": VOCAB, "n_embd": 32, "n_layer": 2,
                                                 "n_head": 4, "rotary_dim": 4, "n_positions": 64}),
    "gpt_neox": (tf.GPTNeoXConfig, tf.GPTNeoXForCausalLM, SMALL | {"attention_bias": True}),
    "falcon-gqa": (tf.FalconConfig, tf.FalconForCausalLM,
                   FALCON | {"new_decoder_architecture": True, "num_kv_heads": 2, "bias": True}),
    "falcon-mqa": (tf.FalconConfig, tf.FalconForCausalLM,
                   FALCON | {"new_decoder_architecture": False, "multi_query": True}),
    "falcon-mha": (tf.FalconConfig, tf.FalconForCausalLM,
                   FALCON | {"new_decoder_architecture": False, "multi_query": False}),
    "phi3": (tf.Phi3Config, tf.Phi3ForCausalLM,
             GQA | {"pad_token_id": 0, "bos_token_id": 0, "eos_token_id": 0}),
    "baichuan": (BaichuanConfig, BaichuanForCausalLM, {}),
}  # fmt: skip

# Tiny MoE models, 2 blocks of 4 experts: (config class, model class, config values); GPT-OSS
# stores its experts transposed, [E, in, out], with gate and up interleaved.
EXPERTS = {"vocab_size": VOCAB, "hidden_size": 32, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
           "num_experts_per_tok": 2}  # fmt: skip
MOE = {
    "mixtral": (tf.MixtralConfig, tf.MixtralForCausalLM,
                EXPERTS | {"intermediate_size": 24, "num_local_experts": 4}),
    "qwen2_moe": (tf.Qwen2MoeConfig, tf.Qwen2MoeForCausalLM,
                  EXPERTS | {"intermediate_size": 48, "moe_intermediate_size": 16,
                             "num_experts": 4, "shared_expert_intermediate_size": 24}),
    "qwen3_moe": (tf.Qwen3MoeConfig, tf.Qwen3MoeForCausalLM,
                  EXPERTS | {"intermediate_size": 48, "moe_intermediate_size": 16,
                             "num_experts": 4, "head_dim": 8}),
    "gpt_oss": (tf.GptOssConfig, tf.GptOssForCausalLM,
                EXPERTS | {"intermediate_size": 16, "num_local_experts": 4, "head_dim": 8,
                           "layer_types": ["sliding_attention", "full_attention"]}),
}  # fmt: skip

EXPERT_PARAMS = ("experts.gate_up_proj", "experts.down_proj")  # the 3-D parameters of each


def base_model(arch: str, seed: int = 0) -> nn.Module:
    """A randomly initialised 2-block model of ``arch`` (a key of ``ARCHS``)."""
    torch.manual_seed(seed)
    config_class, model_class, values = ARCHS[arch]
    return model_class(config_class(**values))


def moe_base(arch: str, seed: int = 0, **values) -> nn.Module:
    """A randomly initialised tiny MoE model of ``arch`` (a key of ``MOE``), its config values
    overridden by ``values``."""
    torch.manual_seed(seed)
    config_class, model_class, defaults = MOE[arch]
    return model_class(config_class(**defaults | values))


def moe_model(arch: str, method: str, seed: int = 0) -> nn.Module:
    """A tiny MoE model of ``arch``, for FT or with LoRA on both expert parameters, moved."""
    model = moe_base(arch, seed)
    if method == "lora":
        config = LoraConfig(
            r=2, lora_alpha=4, target_modules=[], target_parameters=list(EXPERT_PARAMS)
        )
        model = get_peft_model(model, config)
    perturb(model, seed=seed + 1)
    return model


class SorsaStandIn(nn.Module):
    """A layer in the reference ``sorsa`` package layout: W_r + scale · (B ⊙ S) A."""

    def __init__(self, linear: nn.Linear, r: int, scale: float = 1.0):
        super().__init__()
        u, s, vh = torch.linalg.svd(linear.weight.detach(), full_matrices=False)
        self.weight = nn.Parameter(linear.weight.detach() - (u[:, :r] * s[:r]) @ vh[:r] * scale)
        self.weight.requires_grad = False
        self.bias = linear.bias
        self.sorsa_A = nn.Parameter(vh[:r].clone())
        self.sorsa_S = nn.Parameter(s[:r].clone())
        self.sorsa_B = nn.Parameter(u[:, :r].clone())
        self.scale = scale

    def merged_weight(self) -> torch.Tensor:
        return self.weight + self.scale * (self.sorsa_B * self.sorsa_S) @ self.sorsa_A

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.merged_weight(), self.bias)


def attach_sorsa(model: nn.Module, targets: tuple[str, ...], r: int, scale: float) -> nn.Module:
    """Replace every target nn.Linear by a SorsaStandIn; freeze everything else."""
    for p in model.parameters():
        p.requires_grad = False
    for path, module in list(model.named_modules()):
        if path.rsplit(".", 1)[-1] in targets and isinstance(module, nn.Linear):
            parent, name = path.rsplit(".", 1)
            setattr(model.get_submodule(parent), name, SorsaStandIn(module, r, scale))
    return model


def with_method(model: nn.Module, method: str, targets: tuple[str, ...], r: int = 4) -> nn.Module:
    """``model`` prepared for fine-tuning with ``method`` on ``targets``."""
    if method == "ft":
        return model
    if method == "sorsa":
        return attach_sorsa(model, targets, r, scale=0.5)
    if method == "adalora":
        config = AdaLoraConfig(
            init_r=r, target_r=r // 2, total_step=100, target_modules=list(targets),
            lora_alpha=8,
        )  # fmt: skip
    else:
        config = LoraConfig(
            r=r, lora_alpha=8, target_modules=list(targets), use_dora=method == "dora",
            init_lora_weights="pissa" if method == "pissa" else True,
        )  # fmt: skip
    return get_peft_model(model, config)


def perturb(model: nn.Module, seed: int = 1, size: float = 0.1) -> None:
    """Move every trainable tensor randomly, as training would (B, E, magnitude become nonzero)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * size)


def batch(seed: int, size: int = 4, length: int = 16) -> torch.Tensor:
    """Random token ids, the same for a given seed."""
    return torch.randint(0, VOCAB, (size, length), generator=torch.Generator().manual_seed(seed))


def _torch_layout(module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
    return (
        weight.T if isinstance(module, Conv1D) or getattr(module, "fan_in_fan_out", 0) else weight
    )


def reference_weights(model, method: str, paths) -> dict[str, torch.Tensor]:
    """Each target's W_t from a float64 copy of the model, merged by the method's own code."""
    merged = copy.deepcopy(model).double()
    if method not in ("ft", "sorsa"):
        merged = merged.merge_and_unload()
    out = {}
    for path in paths:
        module = merged.get_submodule(path)
        weight = module.merged_weight() if method == "sorsa" else module.weight
        out[path] = _torch_layout(module, weight.detach())
    return out


def reference_principal(model, method: str, paths) -> dict[str, torch.Tensor]:
    """Each target's trainable part W_p in float64, from the method's own code (not for FT)."""
    double = copy.deepcopy(model).double()
    prefix = "" if method == "sorsa" else "base_model.model."
    out = {}
    for path in paths:
        module = double.get_submodule(prefix + path)
        if method == "sorsa":
            delta = module.merged_weight() - module.weight
        else:
            delta = _torch_layout(module, module.get_delta_weight(module.active_adapters[0]))
        out[path] = delta.detach()
    return out


class RandomTokens(torch.utils.data.Dataset):
    """A fixed causal-LM dataset of random tokens (item i is the same on every rank and run)."""

    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = batch(1000 + i, size=1)[0]
        return {"input_ids": ids, "labels": ids}


def expert_weights(model, method: str) -> dict[str, torch.Tensor]:
    """Every expert's matrix in torch layout (out × in), float64, from peft's own merge (LoRA)
    or the parameter itself (FT): {"<parameter path>[e]": W_e}."""
    merged = copy.deepcopy(model).double()
    if method == "lora":
        merged = merged.merge_and_unload()
    out = {}
    for path, module in merged.named_modules():
        if not hasattr(module, "is_transposed"):
            continue
        for name in ("gate_up_proj", "down_proj"):
            stack = getattr(module, name).detach()
            for e in range(stack.shape[0]):
                out[f"{path}.{name}[{e}]"] = stack[e].T if module.is_transposed else stack[e]
    return out
