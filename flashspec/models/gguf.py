"""GGUF checkpoints (llama.cpp's format): load one through transformers, which dequantizes it to float, and
turn it into a plain model that `save_pretrained` accepts.

transformers marks a GGUF-loaded model as quantized ("quantized with gguf and is not serializable") although
its weights are already plain floats; copying them into a model built from the same config, minus
`quantization_config`, gives an ordinary checkpoint.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, PreTrainedModel
from transformers import PreTrainedTokenizerBase as Tokenizer


def require_gguf() -> None:
    """transformers reads GGUF through the `gguf` package; name the fix before it fails deep inside."""
    if importlib.util.find_spec("gguf") is None:
        raise ImportError("reading a GGUF file needs the `gguf` package: pip install gguf (or flashspec[gguf])")


def split_path(name: str, gguf_file: str) -> tuple[str, str]:
    """transformers wants (folder, file name); accept a full path in `gguf_file` too."""
    path = Path(gguf_file)
    if path.is_absolute() or path.parent != Path("."):
        return str(path.parent), path.name
    return name, gguf_file


def load_gguf(name: str, gguf_file: str, dtype: torch.dtype) -> tuple[PreTrainedModel, Tokenizer]:
    """The plain model and tokenizer in `gguf_file` (a path, or a file name inside the folder `name`)."""
    require_gguf()
    folder, file = split_path(name, gguf_file)
    if not (Path(folder) / file).is_file():
        raise FileNotFoundError(f"GGUF file {Path(folder) / file} does not exist: check target.gguf_file")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    # Dequantized in float32 (what transformers' GGUF kernels compute in), rounded to `dtype` once.
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
    return plain_copy(loaded, dtype), tokenizer


def plain_copy(model: PreTrainedModel, dtype: torch.dtype) -> PreTrainedModel:
    """The same weights in a model of the same class whose config has no `quantization_config`."""
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = dtype
    plain = type(model)(config)
    plain.load_state_dict(model.state_dict())
    plain.generation_config = GenerationConfig.from_model_config(config)
    return plain.to(dtype).eval()


def convert(gguf_path: Path, out_dir: Path, dtype: torch.dtype = torch.bfloat16) -> None:
    """Write the GGUF file's model (in `dtype`), tokenizer (with its chat template) and generation config
    to `out_dir` as a save_pretrained folder."""
    model, tokenizer = load_gguf(str(gguf_path.parent), gguf_path.name, dtype)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
