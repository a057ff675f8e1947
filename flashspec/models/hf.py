"""Any Hugging Face causal LM, with its own DynamicCache cropped back after each step.

Sliding-window layers keep every key (the model's mask still applies the window), so a crop can always go
back: a sliding layer's own cache drops what leaves the window and could not be rolled back past it."""

from __future__ import annotations

import inspect

import torch
from torch import Tensor
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from flashspec.models.base import CausalLM, Scores


class HFModel(CausalLM):
    def __init__(self, model: PreTrainedModel, max_context: int) -> None:
        self.model = model.eval()
        self.vocab_size = model.config.vocab_size
        self.max_context = max_context
        self.device = model.device
        # transformers renamed `past_key_values` to `cache` in 5.x; pass whichever this version takes.
        params = inspect.signature(model.forward).parameters
        self.cache_kwarg = "cache" if "cache" in params else "past_key_values"
        self.reset()
        kinds = sorted({type(layer).__name__ for layer in self.cache.layers if type(layer) is not DynamicLayer})
        if kinds:
            self.rollback_problem = f"its cache layers {kinds} cannot be cropped back to a shorter context"

    def reset(self) -> None:
        self.cache = DynamicCache(config=self.model.config)
        for i, layer in enumerate(self.cache.layers):
            if type(layer) is DynamicSlidingWindowLayer:
                self.cache.layers[i] = DynamicLayer()
        self.length = 0

    @torch.inference_mode()
    def forward(self, tokens: Tensor, parents: Tensor | None = None) -> Scores:
        if parents is not None:
            raise NotImplementedError("the Hugging Face fallback scores chains only; use a Llama-family target")
        self.check_room(len(tokens))
        positions = torch.arange(self.length, self.length + len(tokens), device=self.device)
        out = self.model(
            input_ids=tokens[None].to(self.device),
            position_ids=positions[None],
            **{self.cache_kwarg: self.cache},
            use_cache=True,
            output_hidden_states=True,
        )
        self.length += len(tokens)
        return Scores(out.logits[0].float(), out.hidden_states[-1][0])

    def crop(self, length: int) -> None:
        if length < self.length:
            # A negative argument removes that many tokens in every transformers version we support.
            self.cache.crop(length - self.length)
            self.length = length
