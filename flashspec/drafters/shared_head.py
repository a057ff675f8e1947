"""A draft model that borrows the target's frozen embedding and LM head and owns only a few decoder layers
(and a final norm), of the target's width, initialised from the target's own first layers and trained by
self-distillation (flashspec/train/draft.py).

Its checkpoint is a drafter directory (checkpoint.py) of kind `shared_head_draft`: the layers' and norm's
tensors, the Llama config of the draft, and the target it borrows from (its shapes and name). Loaded as
`ArmConfig(kind="draft_model", model=<dir>)`, the embedding and head are the running target's own modules,
attached at load time (no copy), and the draft decodes as a NativeLlama like any other draft model.
A vocabulary of 49152 at width 576 is 28 M parameters: stored with every draft, it would be 57 MB of bf16.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import LlamaConfig, LlamaForCausalLM, PretrainedConfig, PreTrainedModel

from flashspec.drafters.checkpoint import CONFIG, load_checkpoint, save_checkpoint, target_signature
from flashspec.drafters.layers import decoder_layer
from flashspec.models import resolve_name

KIND = "shared_head_draft"


def is_shared_head(path: str) -> bool:
    """Whether `path` is a shared-head draft directory (not a whole save_pretrained model)."""
    config = Path(resolve_name(path)) / CONFIG
    return config.is_file() and json.loads(config.read_text()).get("kind") == KIND


class SharedHeadDraft(nn.Module):
    """A Llama causal LM of `layers` over the target's embedding, rotary embedding and LM head: the attributes
    NativeLlama reads (`config`, `model.embed_tokens / layers / norm / rotary_emb`, `lm_head`)."""

    def __init__(self, target: PreTrainedModel, layers: nn.ModuleList, norm: nn.Module) -> None:
        super().__init__()
        self.config = copy.copy(target.config)
        self.config.num_hidden_layers = len(layers)
        body = target.model
        self.model = nn.Module()
        self.model.embed_tokens, self.model.rotary_emb = body.embed_tokens, body.rotary_emb
        self.model.layers, self.model.norm = layers, norm
        self.lm_head = target.lm_head

    @classmethod
    def from_target(cls, target: PreTrainedModel, n_layers: int) -> SharedHeadDraft:
        """Copies of the target's first n_layers layers and its final norm, trainable; the rest borrowed."""
        depth = len(target.model.layers)
        if not 1 <= n_layers < depth:
            raise ValueError(f"draft n_layers={n_layers}: use 1 to {depth - 1} (the target has {depth} layers)")
        layers = nn.ModuleList(copy.deepcopy(layer) for layer in target.model.layers[:n_layers])
        draft = cls(target, layers, copy.deepcopy(target.model.norm))
        for module in (draft.model.layers, draft.model.norm):
            module.requires_grad_(True)
        return draft

    def own_state(self) -> dict[str, Tensor]:
        """What the checkpoint stores: the layers and the norm, never the borrowed embedding or head."""
        return {f"{name}.{k}": v for name in ("layers", "norm")
                for k, v in getattr(self.model, name).state_dict().items()}

    def forward(self, input_ids: Tensor) -> Tensor:
        """Logits [B, S, V] over whole windows [B, S] (training; decoding goes through NativeLlama)."""
        x = self.model.embed_tokens(input_ids)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)[None].expand(len(input_ids), -1)
        cos, sin = self.model.rotary_emb(x, positions)
        n = input_ids.shape[1]
        mask = torch.ones(n, n, dtype=torch.bool, device=input_ids.device).tril()
        for layer in self.model.layers:
            x, _, _ = decoder_layer(layer, x, cos, sin, None, mask)
        return self.lm_head(self.model.norm(x))


def save_shared_head(path: str | Path, draft: SharedHeadDraft, target_config: PretrainedConfig, target_name: str,
                     training: dict) -> Path:
    """bf16 tensors of the draft's own layers and norm, with the target it borrows from named."""
    state = {k: v.to(torch.bfloat16) for k, v in draft.own_state().items()}
    meta = {"target": target_signature(target_config), "borrows": {"from": target_name,
                                                                   "modules": ["embed_tokens", "lm_head"]},
            "layers": len(draft.model.layers), "training": training}
    return save_checkpoint(path, KIND, state, meta)


def load_shared_head(path: str | Path, target: PreTrainedModel) -> SharedHeadDraft:
    """The draft at `path` on `target`'s embedding and head, in the target's dtype and on its device."""
    meta, state = load_checkpoint(path, KIND, target.config)
    config = copy.copy(target.config)
    layers = nn.ModuleList(type(target.model.layers[0])(config, layer_idx=i) for i in range(meta["layers"]))
    norm = copy.deepcopy(target.model.norm)
    p = next(target.parameters())
    draft = SharedHeadDraft(target, layers.to(device=p.device, dtype=p.dtype), norm)
    own = {k: v.to(device=p.device, dtype=p.dtype) for k, v in state.items()}
    for name in ("layers", "norm"):
        part = {k.split(".", 1)[1]: v for k, v in own.items() if k.split(".", 1)[0] == name}
        getattr(draft.model, name).load_state_dict(part)
    return draft.eval()


def hf_model(path: str | Path, target: PreTrainedModel) -> LlamaForCausalLM:
    """The draft as a whole transformers model (for `generate(assistant_model=...)`), its embedding and head
    the target's own tensors (shared, not copied)."""
    draft = load_shared_head(path, target)
    config = LlamaConfig(**{**target.config.to_dict(), "num_hidden_layers": len(draft.model.layers)})
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model.model.embed_tokens, model.model.rotary_emb = draft.model.embed_tokens, draft.model.rotary_emb
    model.model.layers, model.model.norm, model.lm_head = draft.model.layers, draft.model.norm, draft.lm_head
    return model.eval()
