"""Drafter checkpoints as their authors released them, beside our own format (flashspec/drafters/checkpoint.py).

Read from the authors' code (docs/baselines.md names the files and commits):
* Medusa-1 (FasterDecoding/Medusa): `config.json` with `medusa_num_heads`, `medusa_num_layers`,
  `base_model_name_or_path`, and `medusa_lm_head.pt` (or `.safetensors`, as their trainer writes).
* EAGLE-1/2 (SafeAILab/EAGLE, eagle/model/cnets1.py): a Llama `config.json` and `pytorch_model.bin` (or
  `model.safetensors`) with `fc` and `layers.0`.
* EAGLE-3 (eagle/model/cnets.py): the same files; its `config.json` has `draft_vocab_size`, its weights
  `fc`, `midlayer`, `norm`, `lm_head`, `d2t`, `t2d`.

A directory whose `config.json` has our `kind` is ours; anything else is recognised by those fields.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor

from flashspec.drafters.checkpoint import CONFIG
from flashspec.models import resolve_name

MEDUSA_FILES = ("medusa_lm_head.safetensors", "medusa_lm_head.pt")
EAGLE_FILES = ("model.safetensors", "pytorch_model.bin")


def official_layout(path: str | Path) -> str | None:
    """'medusa', 'eagle' or 'eagle3' for a directory in that official layout; None for ours or no directory."""
    file = Path(resolve_name(str(path))) / CONFIG
    if not str(path) or not file.is_file():
        return None
    config = json.loads(file.read_text())
    if "kind" in config:
        return None
    if "medusa_num_heads" in config:
        return "medusa"
    return "eagle3" if "draft_vocab_size" in config else "eagle"


def is_official(path: str | Path, kind: str) -> bool:
    """Whether `path` holds `kind`'s official layout (False: our own format, or nothing there); a directory
    in another official layout is refused, naming the arm kind that reads it."""
    layout = official_layout(path)
    if layout not in (None, kind):
        raise ValueError(f"{path} holds an official {layout} head, not {kind}: use arm kind {layout}")
    return layout == kind


def read_official(path: str | Path, files: tuple[str, ...]) -> tuple[Path, dict[str, Any], dict[str, Tensor]]:
    """(directory, config.json, tensors) of an official checkpoint: the first of `files` present, `.bin` and
    `.pt` read with weights_only=True (a pickle runs no code)."""
    path = Path(resolve_name(str(path)))
    config = json.loads((path / CONFIG).read_text())
    for name in files:
        if (path / name).is_file():
            if name.endswith(".safetensors"):
                return path, config, load_file(path / name)
            return path, config, torch.load(path / name, map_location="cpu", weights_only=True)
    raise ValueError(f"no weights at {path}: expected one of {', '.join(files)} beside {CONFIG}")


def check_shape(kind: str, path: Path, name: str, tensor: Tensor | None, expected: tuple[int, ...],
                meaning: str) -> Tensor:
    """`tensor` if its shape is `expected`; else one line naming the tensor, both shapes and what they mean."""
    if tensor is None:
        raise ValueError(f"the {kind} head at {path} has no tensor {name!r}: not an official {kind} checkpoint")
    if tuple(tensor.shape) != expected:
        raise ValueError(
            f"the {kind} head at {path} does not fit this target: {name} is {tuple(tensor.shape)}, the target "
            f"needs {expected} ({meaning}); use a head released for this target"
        )
    return tensor
