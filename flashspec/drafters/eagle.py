"""The EAGLE head (Li et al. 2024, arXiv 2401.15077): autoregression over the target's features, not tokens.

Entry i of the head reads the target's feature f_i (its last hidden state, after the final norm, at position
i) and the embedding of the token x_{i+1} that followed it:

    g_i = Decoder(fc([embed(x_{i+1}); f_i]))   ~ f_{i+1},   and   lm_head(g_i) ~ the target's p(x_{i+2})

The embedding and lm_head are the target's own, frozen and not stored: the head's parameters are fc and one
Llama decoder layer with the target's widths. While drafting, a predicted feature g_i stands in for the
unknown f_{i+1} and the head runs on; once the target has verified, its real features replace them.

EAGLE-1/2 as their authors released it (SafeAILab/EAGLE eagle/model/cnets1.py, read by `load_official_eagle`)
is this head without the layer's input norm (their layer 0 has none), with head_dim = hidden / heads and
its own RoPE settings in its config.json; `save_official_eagle` writes such a head in their layout.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import LlamaConfig, PretrainedConfig
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

from flashspec.drafters.checkpoint import CONFIG, load_checkpoint, save_checkpoint, target_signature
from flashspec.drafters.layers import decoder_layer
from flashspec.drafters.official import EAGLE_FILES, check_shape, read_official

KIND = "eagle"


def head_config(target: PretrainedConfig) -> LlamaConfig:
    """One Llama layer with the target's widths, heads and rotary embedding."""
    return LlamaConfig(
        vocab_size=target.vocab_size, hidden_size=target.hidden_size,
        intermediate_size=target.intermediate_size,
        num_attention_heads=target.num_attention_heads, num_key_value_heads=target.num_key_value_heads,
        head_dim=getattr(target, "head_dim", None) or target.hidden_size // target.num_attention_heads,
        rms_norm_eps=target.rms_norm_eps, max_position_embeddings=target.max_position_embeddings,
        rope_parameters=target.rope_parameters, num_hidden_layers=1,
    )


class EagleHead(nn.Module):
    def __init__(self, config: LlamaConfig, input_norm: bool = True, fc_bias: bool = True) -> None:
        """`input_norm=False`: the official EAGLE-1/2 layer, whose input is fc's output as it is."""
        super().__init__()
        self.config = config
        width = config.hidden_size
        self.fc = nn.Linear(2 * width, width, bias=fc_bias)
        self.layer = LlamaDecoderLayer(config, layer_idx=0)
        if not input_norm:
            self.layer.input_layernorm = nn.Identity()
        self.rotary = LlamaRotaryEmbedding(config)

    def forward(
        self, features: Tensor, embeds: Tensor, positions: Tensor, mask: Tensor,
        past: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Predicted next features [B, n, D] from features f_i and embeddings of x_{i+1} ([B, n, D] each) at
        positions i ([B, n]); the block attends to `past` keys/values and itself under `mask` ([n, S + n]).
        Also returns the block's keys and values, for the caller's cache."""
        x = self.fc(torch.cat([embeds, features], -1))
        cos, sin = self.rotary(x, positions)
        return decoder_layer(self.layer, x, cos, sin, past, mask)


def save_eagle(path: str | Path, head: EagleHead, target_config: PretrainedConfig, training: dict) -> Path:
    meta = {"target": target_signature(target_config), "head": head.config.to_dict(), "training": training}
    return save_checkpoint(path, KIND, head.state_dict(), meta)


def load_eagle(path: str | Path, target_config: PretrainedConfig) -> EagleHead:
    meta, state = load_checkpoint(path, KIND, target_config)
    head = EagleHead(LlamaConfig(**meta["head"]))
    head.load_state_dict(state)
    return head.eval()


def official_config(config: dict[str, Any], path: Path, kind: str = KIND) -> LlamaConfig:
    """The LlamaConfig of an official EAGLE head from its config.json, with their defaults (EConfig in
    eagle/model/configs.py) and their attention (head_dim = hidden / heads; RoPE default or linear)."""
    scaling = config.get("rope_scaling")
    rope = {"rope_type": "default", "rope_theta": float(config.get("rope_theta", 10000.0))}
    if scaling is not None:
        kind_ = scaling.get("type", scaling.get("rope_type"))
        if kind_ != "linear":  # their code knows linear and dynamic; dynamic rebuilds its cache per length
            raise ValueError(f"the {kind} head at {path} uses RoPE scaling {kind_!r}: only none or 'linear' is read")
        rope = {**rope, "rope_type": "linear", "factor": float(scaling["factor"])}
    heads = int(config["num_attention_heads"])
    return LlamaConfig(
        vocab_size=int(config["vocab_size"]), hidden_size=int(config["hidden_size"]),
        intermediate_size=int(config["intermediate_size"]), num_attention_heads=heads,
        num_key_value_heads=int(config.get("num_key_value_heads") or heads),
        head_dim=int(config["hidden_size"]) // heads, hidden_act=config.get("hidden_act", "silu"),
        rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
        max_position_embeddings=int(config.get("max_position_embeddings", 2048)), rope_parameters=rope,
        attention_bias=bool(config.get("qkv_bias", False)), num_hidden_layers=1,
    )


def official_embedding(
    state: dict[str, Tensor], path: Path, kind: str, target: PretrainedConfig
) -> nn.Embedding | None:
    """The checkpoint's own token embedding when it stores one (their loader then uses it over the target's)."""
    if "embed_tokens.weight" not in state:
        return None
    weight = check_shape(kind, path, "embed_tokens.weight", state["embed_tokens.weight"],
                         (target.vocab_size, target.hidden_size), "vocab x hidden")
    return nn.Embedding.from_pretrained(weight.float(), freeze=True)


def load_official_eagle(path: str | Path, target_config: PretrainedConfig) -> tuple[EagleHead, nn.Embedding | None]:
    """An EAGLE-1/2 head as released and its stored embedding (None: the target's), float32."""
    path, config, state = read_official(path, EAGLE_FILES)
    if int(config.get("num_hidden_layers", 1)) != 1:
        raise ValueError(f"the eagle head at {path} has {config['num_hidden_layers']} layers: only 1 is read")
    llama = official_config(config, path)
    width = target_config.hidden_size
    check_shape(KIND, path, "fc.weight", state.get("fc.weight"), (width, 2 * width), "hidden x 2 hidden")
    head = EagleHead(llama, input_norm=False, fc_bias="fc.bias" in state)
    if llama.attention_bias:  # their qkv_bias puts biases on q, k and v only
        head.layer.self_attn.o_proj.register_parameter("bias", None)
    own = ("fc.", "layers.0.")
    ours = {k.replace("layers.0.", "layer.", 1): v.float() for k, v in state.items() if k.startswith(own)}
    for name, tensor in head.state_dict().items():
        check_shape(KIND, path, name.replace("layer.", "layers.0.", 1), ours.get(name), tuple(tensor.shape),
                    "the head's own widths")
    head.load_state_dict(ours)
    return head.eval(), official_embedding(state, path, KIND, target_config)


def save_official_eagle(path: str | Path, head: EagleHead, embed: Tensor, target_config: PretrainedConfig) -> Path:
    """An EAGLE head without input norm in EAGLE-1/2's layout (their EaModel.from_pretrained reads it):
    pytorch_model.bin with fc, layers.0 and the target's embed_tokens, and their Llama config.json."""
    if not isinstance(head.layer.input_layernorm, nn.Identity):
        raise ValueError("EAGLE's layer has no input norm: train the head with input_norm=False to export it")
    cfg = head.config
    if cfg.head_dim * cfg.num_attention_heads != cfg.hidden_size:
        raise ValueError(f"EAGLE's attention needs head_dim x heads = hidden, this head has {cfg.head_dim} x "
                         f"{cfg.num_attention_heads} != {cfg.hidden_size}")
    rope = cfg.rope_parameters
    if rope["rope_type"] not in ("default", "linear"):
        raise ValueError(f"EAGLE's code reads RoPE default or linear, this head has {rope['rope_type']!r}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k.replace("layer.", "layers.0.", 1): v for k, v in head.state_dict().items()}
    state["embed_tokens.weight"] = embed
    torch.save({k: v.detach().float().cpu().contiguous() for k, v in state.items()}, path / EAGLE_FILES[1])
    config = {
        "architectures": ["LlamaForCausalLM"], "bias": "fc.bias" in state, "hidden_act": cfg.hidden_act,
        "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
        "max_position_embeddings": cfg.max_position_embeddings, "model_type": "llama",
        "num_attention_heads": cfg.num_attention_heads, "num_hidden_layers": 1,
        "num_key_value_heads": cfg.num_key_value_heads, "pad_token_id": target_config.pad_token_id,
        "bos_token_id": target_config.bos_token_id, "eos_token_id": target_config.eos_token_id,
        "rms_norm_eps": cfg.rms_norm_eps, "rope_theta": rope["rope_theta"],
        "rope_scaling": None if rope["rope_type"] == "default" else {"type": "linear", "factor": rope["factor"]},
        "tie_word_embeddings": False, "torch_dtype": "float32", "vocab_size": target_config.vocab_size,
    }
    (path / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return path
