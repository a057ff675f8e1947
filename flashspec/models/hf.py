"""Any Hugging Face causal LM, with its own DynamicCache cropped back after each step.

Sliding-window layers keep every key (the model's mask still applies the window), so a crop can always go
back: a sliding layer's own cache drops what leaves the window and could not be rolled back past it.

Phi-3-style longrope: the model's `generate` re-encodes the whole sequence with the long factors the first time
it passes `original_max_position_embeddings`, so a position past it sees a context encoded long, one before it a
context encoded short. The cache here is in one of those two regimes and is re-encoded when a block needs the
other; a block that straddles the boundary is scored in two parts."""

from __future__ import annotations

import inspect

import torch
from torch import Tensor
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from flashspec.models.base import CausalLM, Scores
from flashspec.models.fidelity import rope_limit

REENCODING = ("phi3", "phimoe")  # model types whose generate re-encodes the sequence when it crosses to longrope


class HFModel(CausalLM):
    def __init__(self, model: PreTrainedModel, max_context: int) -> None:
        self.model = model.eval()
        self.vocab_size = model.config.vocab_size
        self.max_context = max_context
        self.device = model.device
        # transformers renamed `past_key_values` to `cache` in 5.x; pass whichever this version takes.
        params = inspect.signature(model.forward).parameters
        self.cache_kwarg = "cache" if "cache" in params else "past_key_values"
        found = rope_limit(model.config)
        self.switch = found[1] if found and found[0] == "longrope" and model.config.model_type in REENCODING else None
        self.per_token_rope = self.switch is not None
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
        self.tokens = torch.empty(0, dtype=torch.long)  # what the cache holds (kept only to re-encode it)
        self.long = False  # the cache is encoded with longrope's long factors

    @torch.inference_mode()
    def forward(self, tokens: Tensor, parents: Tensor | None = None) -> Scores:
        if parents is not None:
            raise NotImplementedError("the Hugging Face fallback scores chains only; use a Llama-family target")
        self.check_room(len(tokens))
        if self.switch is None:
            return self._forward(tokens)
        start, n, switch = self.length, len(tokens), self.switch
        if 0 < start < switch < start + n:  # rows before the switch see a short context, the others a long one
            first = self.forward(tokens[: switch - start])
            rest = self.forward(tokens[switch - start :])
            return Scores(torch.cat([first.logits, rest.logits]), torch.cat([first.hidden, rest.hidden]))
        if self.long != (start + n > switch) and start > 0:  # re-encode the cache in this block's regime
            tokens = torch.cat([self.tokens, tokens.cpu()])
            self.reset()
        self.long = start + n > switch
        self.tokens = torch.cat([self.tokens, tokens.cpu()])
        scores = self._forward(tokens)
        return scores.rows(slice(len(scores.logits) - n, None))

    def _forward(self, tokens: Tensor) -> Scores:
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
            self.tokens = self.tokens[:length]
