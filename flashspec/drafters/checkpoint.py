"""A drafter checkpoint: a directory with `config.json` (its kind, shapes and training record) and
`model.safetensors` (only the drafter's own tensors: whatever it shares with the target is not stored)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import Tensor
from transformers import PretrainedConfig

from flashspec.models import resolve_name

CONFIG, WEIGHTS = "config.json", "model.safetensors"


def target_signature(config: PretrainedConfig) -> dict[str, int]:
    """The target shapes a drafter is tied to; a drafter loaded onto another target is an error."""
    return {k: int(getattr(config, k)) for k in ("vocab_size", "hidden_size", "num_hidden_layers")}


def save_checkpoint(path: str | Path, kind: str, state: dict[str, Tensor], meta: dict[str, Any]) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, path / WEIGHTS)
    (path / CONFIG).write_text(json.dumps({"kind": kind, **meta}, indent=2) + "\n")
    return path


def load_checkpoint(
    path: str | Path, kind: str, target_config: PretrainedConfig
) -> tuple[dict, dict[str, Tensor]]:
    """(meta, tensors) of the `kind` checkpoint at `path`, checked against the target it will draft for."""
    if not str(path):
        raise ValueError(f"arm kind {kind} needs `model`: a drafter directory (scripts/train_drafters.py)")
    path = Path(resolve_name(str(path)))  # the shipped results/models/... from any working directory
    if not (path / CONFIG).is_file() or not (path / WEIGHTS).is_file():
        raise ValueError(
            f"no {kind} drafter at {str(path)!r}: expected a directory with {CONFIG} and {WEIGHTS}, as "
            "scripts/train_drafters.py writes (set the arm's `model` to such a directory)"
        )
    meta = json.loads((path / CONFIG).read_text())
    if meta.get("kind") != kind:
        found = meta.get("kind")
        raise ValueError(f"{path} holds a {found!r} drafter, not {kind!r}: use arm kind {found!r}")
    expected, found = meta.get("target"), target_signature(target_config)
    if expected != found:
        raise ValueError(
            f"the {kind} drafter at {path} was trained for a target with {expected}, but this target has "
            f"{found}: train a drafter for this target (scripts/train_drafters.py)"
        )
    return meta, load_file(path / WEIGHTS)
