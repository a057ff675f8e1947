"""What Hugging Face `generate(do_sample=False)` does beyond the model's forward, reproduced or refused at load:
RoPE whose frequencies depend on the sequence length, the checkpoint's `generation_config` logits processors
and its EOS ids.

Reproducing means every position: a verification block scores 1 + gamma positions in one forward, and each row
must be what `generate` computes when it reaches that position one token at a time.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import (
    GenerationConfig,
    LogitsProcessorList,
    NoRepeatNGramLogitsProcessor,
    PretrainedConfig,
    RepetitionPenaltyLogitsProcessor,
    SuppressTokensLogitsProcessor,
)

# generation_config fields whose processors the engine does not reproduce, and the values that mean "off".
UNSUPPORTED = {
    "sequence_bias": (None,), "guidance_scale": (None, 1, 1.0), "encoder_repetition_penalty": (None, 1.0),
    "bad_words_ids": (None,), "min_length": (None, 0), "min_new_tokens": (None, 0), "forced_bos_token_id": (None,),
    "forced_eos_token_id": (None,), "remove_invalid_values": (None, False), "exponential_decay_length_penalty": (None,),
    "begin_suppress_tokens": (None,), "watermarking_config": (None,),
}


def check_rope(config: PretrainedConfig, max_context: int) -> None:
    """Refuse RoPE that re-derives its frequencies from the longest position of a forward, when the context can
    reach the length where that changes anything (targets that rotate each token as `generate` does skip this).

    `dynamic` rotates a verification block with its last position's frequencies (generate: each token its own);
    `longrope` switches a whole block at once, and Phi-3's generate re-encodes the sequence when it crosses."""
    found = rope_limit(config)
    if found is not None and max_context > found[1]:
        kind, limit = found
        raise ValueError(
            f"rope_type={kind!r} changes every token's rotation once the sequence passes {limit} tokens, which "
            f"this target does not reproduce exactly: set target.max_context <= {limit} (or use a Llama-family "
            "target on backend=native)"
        )


def rope_limit(config: PretrainedConfig) -> tuple[str, int] | None:
    """The length-dependent RoPE type of a config and the sequence length up to which it changes nothing."""
    for params in rope_parameter_sets(config):
        kind = params.get("rope_type", params.get("type", "default"))
        if "dynamic" in kind:
            return kind, config.max_position_embeddings
        if kind == "longrope":
            return kind, params.get("original_max_position_embeddings") or config.original_max_position_embeddings
    return None


def rope_parameter_sets(config: PretrainedConfig) -> list[dict]:
    """The RoPE parameter dicts of a config: one, or one per layer type (Gemma3-style)."""
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    nested = [p for p in params.values() if isinstance(p, dict)]
    return nested or [params]


def logits_processors(generation_config: GenerationConfig | None, device: torch.device) -> LogitsProcessorList:
    """The processors `generate` applies before its argmax that depend on the context alone, in its order; a
    clear error for the ones the engine does not reproduce."""
    if generation_config is None:
        return LogitsProcessorList()
    for name, off in UNSUPPORTED.items():
        value = getattr(generation_config, name, None)
        if value not in off:
            raise ValueError(
                f"generation_config.{name}={value!r} asks for a logits processor the engine does not reproduce: "
                f"remove it from the model's generation_config.json (or set it to {off[-1]!r})"
            )
    processors = LogitsProcessorList()
    penalty = generation_config.repetition_penalty
    if penalty is not None and penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(penalty))
    if (generation_config.no_repeat_ngram_size or 0) > 0:
        processors.append(NoRepeatNGramLogitsProcessor(generation_config.no_repeat_ngram_size))
    if generation_config.suppress_tokens is not None:
        processors.append(SuppressTokensLogitsProcessor(generation_config.suppress_tokens, device=device))
    return processors


def apply_per_row(
    processors: LogitsProcessorList, logits: Tensor, context: Tensor, block: Tensor, parents: Tensor | None
) -> Tensor:
    """Process block row i as `generate` would at its position: with the context, then the block tokens on the
    path to row i (row 0 is the pending token: its context ends with it). `context` holds the committed tokens
    up to and including the pending one, `block` the pending token then the drafts, `parents` the tree's
    (block-relative, -1 = the cache) or None for a chain."""
    if not processors:
        return logits
    rows = []
    for i in range(len(logits)):
        path = block_path(i, parents)
        ids = torch.cat([context, block[path[1:]].cpu()]).to(logits.device)
        rows.append(processors(ids[None], logits[i : i + 1].clone()))
    # The verifiers take finite logits only: a banned token gets the lowest float instead of -inf (probability 0
    # and never the argmax either way).
    return torch.cat(rows).clamp_min(torch.finfo(logits.dtype).min)


def block_path(i: int, parents: Tensor | None) -> list[int]:
    """The block rows from the pending token (0) to row i."""
    if parents is None:
        return list(range(i + 1))
    path = [i]
    while parents[path[-1]] >= 0:
        path.append(int(parents[path[-1]]))
    return path[::-1]


def eos_token_ids(tokenizer, model) -> set[int]:
    """What `generate` stops at: the generation_config's EOS ids, the tokenizer's when it names none."""
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if ids is None:
        ids = tokenizer.eos_token_id
    if ids is None:
        return set()
    return set(ids) if isinstance(ids, (list, tuple)) else {int(ids)}
