"""The EAGLE-3 head (Li et al. 2025, arXiv 2503.01840) as its authors released it (SafeAILab/EAGLE
eagle/model/cnets.py, `Model`): drafting from the target's low, middle and high features, over a reduced
vocabulary.

The target's residual stream entering layers 2, L // 2 and L - 3 (their modeling_llama_kv.py keeps those
three; L = the target's layers), side by side, is fused by fc (3 D_t -> D, no bias) into one feature g_i.
The head's one layer ("midlayer") reads it with the embedding of x_{i+1}:

    a = Attention([input_layernorm(embed(x_{i+1})); hidden_norm(g_i)])    (q, k, v over 2 D)
    g' = g_i + a;   out = g' + MLP(post_attention_layernorm(g'))

and out both stands in for the next feature while drafting (it is fed back as g, without fc) and gives the
draft's logits lm_head(norm(out)) over a draft vocabulary of V_d tokens: draft id d is target id
d + d2t[d] (t2d marks the target ids that have one).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import LlamaConfig, PretrainedConfig
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRMSNorm, LlamaRotaryEmbedding

from flashspec.drafters.eagle import official_config, official_embedding
from flashspec.drafters.layers import attend
from flashspec.drafters.official import EAGLE_FILES, check_shape, read_official

KIND = "eagle3"


def feature_layers(n_layers: int) -> tuple[int, int, int]:
    """The target layers whose inputs EAGLE-3 fuses, low to high (as their decoder loop appends them)."""
    layers = sorted({2, n_layers // 2, n_layers - 3})
    if len(layers) != 3:
        raise ValueError(f"EAGLE-3 fuses the inputs of layers 2, L // 2 and L - 3, which coincide for a target "
                         f"of {n_layers} layers: it needs at least 7")
    return tuple(layers)


class Eagle3Head(nn.Module):
    def __init__(self, config: LlamaConfig, draft_vocab: int, target_width: int) -> None:
        super().__init__()
        self.config = config
        width, eps = config.hidden_size, config.rms_norm_eps
        self.fc = nn.Linear(3 * target_width, width, bias=False)
        self.layer = LlamaDecoderLayer(config, layer_idx=0)
        attn = self.layer.self_attn
        for name in ("q_proj", "k_proj", "v_proj"):  # attention over [embedding; feature]
            setattr(attn, name, nn.Linear(2 * width, getattr(attn, name).out_features, bias=False))
        self.layer.hidden_norm = LlamaRMSNorm(width, eps=eps)  # where their midlayer keeps it
        self.norm = LlamaRMSNorm(width, eps=eps)
        self.lm_head = nn.Linear(width, draft_vocab, bias=False)
        self.register_buffer("d2t", torch.zeros(draft_vocab, dtype=torch.long))
        self.rotary = LlamaRotaryEmbedding(config)

    def forward(
        self, features: Tensor, embeds: Tensor, positions: Tensor, mask: Tensor,
        past: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """EagleHead.forward's contract, with `features` the fused target features after fc, or the head's
        own outputs ([B, n, D] either way)."""
        h = torch.cat([self.layer.input_layernorm(embeds), self.layer.hidden_norm(features)], -1)
        cos, sin = self.rotary(features, positions)
        return attend(self.layer, h, features, cos, sin, past, mask)

    def logits(self, out: Tensor, vocab: int) -> Tensor:
        """Logits over the target's `vocab` ids of the head's outputs [..., D]: the draft vocabulary's at
        their target ids, -inf elsewhere (the draft never proposes a token outside it)."""
        draft = self.lm_head(self.norm(out))
        full = draft.new_full((*draft.shape[:-1], vocab), float("-inf"))
        ids = torch.arange(draft.shape[-1], device=draft.device) + self.d2t
        return full.index_copy(-1, ids, draft)


def load_eagle3(path: str | Path, target_config: PretrainedConfig) -> tuple[Eagle3Head, nn.Embedding | None]:
    """An EAGLE-3 head as released and its stored embedding (None: the target's), float32."""
    path, config, state = read_official(path, EAGLE_FILES)
    feature_layers(target_config.num_hidden_layers)
    llama = official_config(config, path, KIND)
    vocab, width = target_config.vocab_size, llama.hidden_size
    check_shape(KIND, path, "fc.weight", state.get("fc.weight"), (width, 3 * target_config.hidden_size),
                "its width x 3 target hidden")
    check_shape(KIND, path, "t2d", state.get("t2d"), (vocab,), "the target's vocabulary")
    draft_vocab = int(config["draft_vocab_size"])
    d2t = check_shape(KIND, path, "d2t", state.get("d2t"), (draft_vocab,), "draft_vocab_size").long()
    ids = torch.arange(draft_vocab) + d2t
    if bool((ids < 0).any() or (ids >= vocab).any()) or len(ids.unique()) != draft_vocab:
        raise ValueError(f"the eagle3 head at {path} maps its draft vocabulary outside the target's {vocab} ids "
                         "or twice onto one (d2t): use a head released for this target")
    head = Eagle3Head(llama, draft_vocab, target_config.hidden_size)
    ours = {k.replace("midlayer.", "layer.", 1): v.float() for k, v in state.items()
            if k.startswith(("fc.", "midlayer.", "norm.", "lm_head."))}
    ours["d2t"] = d2t
    for name, tensor in head.state_dict().items():
        check_shape(KIND, path, name.replace("layer.", "midlayer.", 1), ours.get(name), tuple(tensor.shape),
                    "the head's own widths")
    head.load_state_dict(ours)
    return head.eval(), official_embedding(state, path, KIND, target_config)
