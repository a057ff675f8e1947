"""LoRA adapters through `peft`, with the API of the SpecStream package (`LoRAAdapter`), so code written for
it ports over: wrap a model, `train` it, `save_weights` / `load_weights`, `get_parameter_stats`. Its config
keys "alpha" and "dropout" are peft's lora_alpha and lora_dropout.

The Speculative Streaming drafter (flashspec/drafters/streaming.py) holds its LoRA weights in one of these.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file
from torch import Tensor, nn
from transformers import AutoTokenizer

WEIGHTS = "adapter_model.safetensors"  # the names peft's own save_pretrained / from_pretrained use
SPECSTREAM_KEYS = {"alpha": "lora_alpha", "dropout": "lora_dropout"}


def as_lora_config(config: LoraConfig | dict) -> LoraConfig:
    """A `LoraConfig` from itself or from a dict of its fields (or SpecStream's names for them; a clear error
    for unknown keys)."""
    if isinstance(config, LoraConfig):
        return config
    if not isinstance(config, dict):
        name = type(config).__name__
        raise ValueError(f"lora_config is a {name}: pass a peft LoraConfig or a dict of its fields")
    both = sorted(k for k, field in SPECSTREAM_KEYS.items() if k in config and field in config)
    if both:
        raise ValueError(f"lora_config gives both {both} and peft's {[SPECSTREAM_KEYS[k] for k in both]}: keep one")
    config = {SPECSTREAM_KEYS.get(k, k): v for k, v in config.items()}
    fields = {f.name for f in dataclasses.fields(LoraConfig)}
    unknown = sorted(set(config) - fields)
    if unknown:
        raise ValueError(f"unknown LoraConfig fields {unknown}: use fields of peft.LoraConfig (r, "
                         "lora_alpha, target_modules, lora_dropout, layers_to_transform, ...)")
    return LoraConfig(**config)


class LoRAAdapter:
    """`base_model` with LoRA adapters injected (in place) as `lora_config` says; only the adapters train.
    `tokenizer` turns texts into training data (default: the one saved with the model, when it was loaded
    from a folder)."""

    def __init__(self, base_model: nn.Module, lora_config: LoraConfig | dict, tokenizer=None) -> None:
        self.config = as_lora_config(lora_config)
        self.tokenizer = tokenizer
        try:
            self.model: PeftModel = get_peft_model(base_model, self.config)
        except ValueError as err:  # peft's message names the modules it could not find
            raise ValueError(
                f"cannot apply LoRA on {self.config.target_modules} to {type(base_model).__name__}: set "
                f"target_modules to names of its Linear layers. Cause: {err}"
            ) from err

    def get_adapted_model(self) -> PeftModel:
        return self.model

    def saved_tokenizer(self):
        """The adapter's tokenizer, else the one saved with the base model (None if neither exists)."""
        source = self.model.get_base_model().name_or_path
        if self.tokenizer is None and source and Path(source).is_dir():
            try:
                self.tokenizer = AutoTokenizer.from_pretrained(source)
            except (OSError, ValueError):  # a folder of weights only: texts then need tokenizer=...
                return None
        return self.tokenizer

    def get_parameter_stats(self) -> dict[str, float]:
        """Trainable (LoRA) and total parameter counts of the adapted model, and the trainable percentage."""
        params = {id(p): p for p in self.model.parameters()}.values()
        trainable = sum(p.numel() for p in params if p.requires_grad)
        total = sum(p.numel() for p in params)
        return {"trainable_params": trainable, "total_params": total,
                "trainable_percent": 100 * trainable / total}

    def lora_state_dict(self) -> dict[str, Tensor]:
        return get_peft_model_state_dict(self.model)

    def load_lora_state_dict(self, state: dict[str, Tensor]) -> None:
        expected = self.lora_state_dict()
        shapes = {k: tuple(v.shape) for k, v in expected.items()}
        found = {k: tuple(v.shape) for k, v in state.items()}
        if shapes != found:
            diff = sorted(set(shapes.items()) ^ set(found.items()))[:4]
            raise ValueError(
                f"these LoRA weights do not fit this adapter (first differences: {diff}): load weights saved "
                "from the same base model with the same lora_config (r, target_modules)"
            )
        set_peft_model_state_dict(self.model, state)

    def save_weights(self, path: str | Path) -> Path:
        """The adapter weights and config into directory `path`, in peft's format."""
        self.model.save_pretrained(str(path))
        return Path(path)

    def load_weights(self, path: str | Path) -> None:
        file = Path(path) / WEIGHTS
        if not file.is_file():
            raise ValueError(f"no LoRA weights at {file}: pass the directory that save_weights wrote")
        # Saved keys drop the adapter name ("lora_A.weight"); ours carry none either.
        self.load_lora_state_dict(load_file(file))

    def train(
        self, dataset_or_texts: Iterable, tokenizer=None, *, epochs: int = 1, lr: float = 2e-4,
        batch_size: int = 8, max_length: int = 256, seed: int = 0,
    ) -> list[float]:
        """Causal-LM fine-tuning of the adapters. `dataset_or_texts`: strings (need a tokenizer: this one, the
        adapter's, or the model's saved one), token-id sequences, or dict rows with "text" or "input_ids" (a
        datasets.Dataset, say). Returns the loss of each step."""
        windows = token_windows(dataset_or_texts, tokenizer or self.saved_tokenizer(), max_length)
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=lr)
        generator = torch.Generator().manual_seed(seed)
        device = next(self.model.parameters()).device
        losses = []
        self.model.train()
        for _ in range(epochs):
            for batch in torch.randperm(len(windows), generator=generator).split(batch_size):
                ids = torch.nn.utils.rnn.pad_sequence([windows[i] for i in batch.tolist()], batch_first=True,
                                                      padding_value=-100).to(device)
                logits = self.model(input_ids=ids.clamp(min=0)).logits[:, :-1]
                loss = F.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten(), ignore_index=-100)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
        self.model.eval()
        return losses


def token_windows(data: Iterable, tokenizer, max_length: int) -> list[Tensor]:
    """Each example as token ids, cut into windows of at most `max_length` (at least two tokens each)."""
    windows = []
    for row in data:
        ids = _token_ids(row, tokenizer)
        for start in range(0, max(len(ids) - 1, 1), max_length):
            window = ids[start : start + max_length]
            if len(window) >= 2:
                windows.append(torch.as_tensor(window, dtype=torch.long))
    if not windows:
        raise ValueError("no training example has two or more tokens: pass longer texts or token sequences")
    return windows


def _token_ids(row, tokenizer) -> Sequence[int]:
    if isinstance(row, dict):
        if "input_ids" not in row and "text" not in row:
            raise ValueError(f"a training row has keys {sorted(row)}: give it 'text' or 'input_ids'")
        row = row["input_ids"] if "input_ids" in row else row["text"]
    if isinstance(row, str):
        if tokenizer is None:
            raise ValueError("texts need a tokenizer: pass tokenizer=..., or pass token-id sequences instead")
        return tokenizer(row)["input_ids"]
    return list(row)
