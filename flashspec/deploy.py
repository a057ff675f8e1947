"""Deploying a transformers model object, as the SpecStream package does: the Speculative Streaming setup behind
`SpeculativeEngine.from_model`, and `DeploymentConfig`, its deployment record.

SpecStream's `acceptance_threshold` is a lossy acceptance rule: it accepts draft tokens the target would not
have produced. Our verifier is lossless (greedy output token-identical to autoregressive decoding, sampled
output distributed as the target's), so the only value that changes nothing, None, is the only one accepted.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel

from flashspec.config import ArmConfig, BanditConfig, FlashSpecConfig, SamplingConfig, TargetConfig
from flashspec.drafters.checkpoint import CONFIG, load_checkpoint
from flashspec.drafters.streaming import KIND
from flashspec.models import PROJECT_ROOT, NativeLlama, load_hf, resolve_name
from flashspec.models.native import ARCHITECTURES, is_supported

SHIPPED = PROJECT_ROOT / "results" / "models"  # where scripts/train_drafters.py put the family's drafters


def streaming_setup(
    model: PreTrainedModel, gamma: int, max_speculation_depth: int, temperature: float, device: str,
    drafter: str | Path | None, train_preset: str | None, acceptance_threshold: float | None,
) -> tuple[FlashSpecConfig, NativeLlama]:
    """The config and target of an engine whose one arm is the Streaming drafter of `model`; its drafts are
    chains (no tree), so the depth of a draft is its length, min(gamma, max_speculation_depth)."""
    if acceptance_threshold is not None:
        raise ValueError(
            f"acceptance_threshold={acceptance_threshold!r} is SpecStream's lossy acceptance rule (it accepts draft "
            "tokens the target would not produce); flashspec's verification is lossless and has no threshold: drop it"
        )
    for name, value in (("gamma", gamma), ("max_speculation_depth", max_speculation_depth)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r}: use an integer >= 1")
    if not is_supported(model):
        raise ValueError(
            f"from_model builds the Speculative Streaming arm, which reads the native Llama path's KV cache: "
            f"{type(model).__name__} is not one of {', '.join(ARCHITECTURES)}; for other models build a "
            "FlashSpecConfig with prompt_lookup or draft_model arms"
        )
    path = streaming_drafter(model, drafter, train_preset)
    meta, _ = load_checkpoint(path, KIND, model.config)  # its kind and its target's shapes checked
    depth, streams = min(gamma, max_speculation_depth), meta["n_streams"]
    if depth > streams:
        raise ValueError(f"a draft of min(gamma, max_speculation_depth) = {depth} tokens needs {depth} streams; the "
                         f"drafter at {path} has {streams}: use gamma <= {streams}")
    device = pick_device(device)
    target = TargetConfig(
        model=model.name_or_path, dtype=str(model.dtype).removeprefix("torch."), device=device, backend="native",
        max_context=min(TargetConfig.max_context, model.config.max_position_embeddings),
    )
    config = FlashSpecConfig(target=target, arms=[ArmConfig(kind=KIND, model=str(path))], gammas=[depth],
                             bandit=BanditConfig(policy="fixed"), sampling=SamplingConfig(temperature=temperature))
    native = NativeLlama(model.to(device).eval(), target.max_context, graphs=torch.device(device).type == "cuda")
    return config, native


def streaming_drafter(model: PreTrainedModel, drafter: str | Path | None, train_preset: str | None) -> Path:
    """The Streaming checkpoint to load: `drafter`, else the one trained for the model saved at
    `model.name_or_path`; with `train_preset`, a missing one is trained there first (flashspec/train/streaming.py)."""
    source = model.name_or_path
    path = Path(resolve_name(str(drafter))) if drafter else trained_for(source)
    if path is not None and (path / CONFIG).is_file():
        return path
    home = Path(resolve_name(source)) if source else None
    if train_preset and home and home.is_dir():
        from flashspec.train.streaming import train  # training's imports (corpus, distillation) only when asked

        out = path or home.with_name(f"{home.name}-streaming")
        train(str(home), out, train_preset)
        return out
    where = f"at {path}" if path else f"trained for {source or 'this model'!r}"
    saved = home and home.is_dir()
    save = "" if saved else "save it (model.save_pretrained(DIR), tokenizer.save_pretrained(DIR)), then "
    raise ValueError(
        f"no Speculative Streaming drafter {where}: {save}train one with `python scripts/train_drafters.py --target "
        f"{home if saved else 'DIR'} --drafters streaming --preset cpu --out OUT` and pass "
        "drafter='OUT/flashspec-streaming' (or pass train_preset='cpu' to train it here)"
    )


def trained_for(source: str) -> Path | None:
    """A Streaming checkpoint whose training record names the model saved at `source`, in a folder beside it or
    in results/models."""
    if not source:
        return None
    home = Path(resolve_name(source)).resolve()
    for folder in (home.parent, SHIPPED):
        for config in sorted(folder.glob(f"*/{CONFIG}")):
            meta = json.loads(config.read_text())
            target = meta.get("training", {}).get("target") if meta.get("kind") == KIND else None
            if target and Path(resolve_name(target)).resolve() == home:
                return config.parent
    return None


def pick_device(device: str) -> str:
    """"auto": CUDA when a GPU is visible, else the CPU; anything else must name a torch device."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"device={device!r} is not a torch device: use auto, cpu, cuda or cuda:N") from err
    return device


@dataclass
class DeploymentConfig:
    """The SpecStream package's deployment record. `engine()` checks this machine against it and builds
    `SpeculativeEngine.from_model` over the model at `model_path`; requests then pass max_new_tokens=max_tokens."""

    model_name: str  # the name the deployment is known by (logs, serving)
    model_path: str  # the target: a save_pretrained folder or a hub id
    gamma: int = 4
    max_tokens: int = 512  # new tokens per request
    temperature: float = 0.7
    memory_gb: float = 16.0  # memory the deployment needs on its device (the GPU's, or the host's on the CPU)
    gpu_required: bool = True

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens={self.max_tokens}: ask for at least one new token per request")
        if not (math.isfinite(self.memory_gb) and self.memory_gb > 0):
            raise ValueError(f"memory_gb={self.memory_gb}: give the memory the deployment needs, in GB (> 0)")
        SamplingConfig(temperature=self.temperature)  # its own check names the problem

    def device(self) -> str:
        """The device this machine offers the deployment; refuses one without a required GPU or enough memory."""
        on_gpu = torch.cuda.is_available()
        if self.gpu_required and not on_gpu:
            raise ValueError(f"{self.model_name}: gpu_required=True but no CUDA GPU is visible: run on a GPU machine "
                             "or set gpu_required=False")
        if on_gpu:
            total = torch.cuda.get_device_properties(0).total_memory
        else:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        if total < self.memory_gb * 1e9:
            raise ValueError(f"{self.model_name}: memory_gb={self.memory_gb} but this {'GPU' if on_gpu else 'machine'} "
                             f"has {total / 1e9:.1f} GB: lower memory_gb or deploy on a larger device")
        return "cuda" if on_gpu else "cpu"

    def engine(self, **from_model):
        """The engine (`from_model` keywords, e.g. drafter=..., pass through)."""
        from flashspec.engine import SpeculativeEngine  # the engine module imports this one

        device = self.device()
        dtype = "bfloat16" if device == "cuda" else "float32"
        model, tokenizer = load_hf(self.model_path, TargetConfig(model=self.model_path, device=device, dtype=dtype))
        return SpeculativeEngine.from_model(model, tokenizer, gamma=self.gamma, max_speculation_depth=self.gamma,
                                            temperature=self.temperature, device=device, **from_model)
