"""Loading a causal LM by name: the built-in tiny models, a local directory or a hub id."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from flashspec.config import TargetConfig
from flashspec.models import smollm2
from flashspec.models.base import CausalLM, Scores
from flashspec.models.gguf import load_gguf
from flashspec.models.hf import HFModel
from flashspec.models.native import NativeLlama, is_supported
from flashspec.models.tiny import BUILTIN, tiny_model, tiny_tokenizer

__all__ = ["CausalLM", "Scores", "HFModel", "NativeLlama", "load_model", "load_hf", "source_record"]

# The project's shipped family (results/models/...) resolves from any working directory.
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def resolve_name(name: str) -> str:
    if Path(name).is_absolute() or Path(name).exists() or not (PROJECT_ROOT / name).exists():
        return name
    return str(PROJECT_ROOT / name)


def load_hf(name: str, cfg: TargetConfig) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The Hugging Face module and tokenizer for `name`, with a clear error for names that resolve nowhere."""
    dtype = getattr(torch, cfg.dtype, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"dtype={cfg.dtype!r} is not a torch dtype: use float32, bfloat16 or float16")
    if name in BUILTIN:
        tokenizer = tiny_tokenizer()
        return tiny_model(name, len(tokenizer)).to(device=cfg.device, dtype=dtype), tokenizer
    if cfg.gguf_file:
        model, tokenizer = load_gguf(resolve_name(name), cfg.gguf_file, dtype)
        return model.to(cfg.device), tokenizer
    name = resolve_name(name)
    if Path(name).name == smollm2.FOLDER and not Path(name).exists():
        raise ValueError(f"{name} does not exist: make it with `{smollm2.FETCH_COMMAND}` (FLASHSPEC_CACHE sets where)")
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" and not Path(name).exists()
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
        kwargs = {"device_map": cfg.device_map} if cfg.device_map else {}
        model = AutoModelForCausalLM.from_pretrained(
            name, dtype=dtype, attn_implementation=cfg.attn_implementation, **kwargs
        )
    except (OSError, ValueError) as err:
        hint = " (HF_HUB_OFFLINE=1 is set, so only the local cache is searched)" if offline else ""
        raise ValueError(
            f"unknown model {name!r}{hint}: give a directory written by save_pretrained, a Hugging Face hub id, "
            f"or one of the built-in models {list(BUILTIN)}. Cause: {err}"
        ) from err
    if not cfg.device_map:
        model = model.to(cfg.device)
    return model.eval(), tokenizer


def source_record(name: str) -> dict | None:
    """What a converted model folder was made from (its source.json: package, version, hashes), if any."""
    path = Path(resolve_name(name)) / smollm2.SOURCE
    return json.loads(path.read_text()) if path.is_file() else None


def load_model(name: str, cfg: TargetConfig) -> tuple[CausalLM, PreTrainedTokenizerBase]:
    """A cache-owning model for `name`: the native path for Llama-family models unless `cfg.backend` says hf."""
    if cfg.backend not in ("auto", "native", "hf"):
        raise ValueError(f"target.backend={cfg.backend!r}: use auto, native or hf")
    model, tokenizer = load_hf(name, cfg)
    if cfg.backend == "native" and not is_supported(model):
        raise ValueError(f"backend=native does not support {type(model).__name__}: use backend=auto or hf")
    if cfg.backend != "hf" and is_supported(model) and not cfg.device_map:
        graphs = cfg.cuda_graphs if cfg.cuda_graphs is not None else torch.device(cfg.device).type == "cuda"
        return NativeLlama(model, cfg.max_context, graphs=graphs), tokenizer
    return HFModel(model, cfg.max_context), tokenizer
