"""Speculative-sampling verifier: `verify` picks the fused Triton kernel on CUDA, the reference elsewhere."""

from __future__ import annotations

import importlib.util

from torch import Tensor

from flashspec.verify.reference import process_logits, sample_from, verify_reference
from flashspec.verify.tree import matched_length, verify_tree_reference

if importlib.util.find_spec("triton") is None:  # triton is Linux-only: the references serve every device
    verify_triton = verify_tree_triton = None
else:
    from flashspec.verify.tree_triton import verify_tree_triton
    from flashspec.verify.triton_kernel import verify_triton

__all__ = [
    "matched_length", "process_logits", "sample_from", "verify", "verify_reference", "verify_tree_reference",
    "verify_tree_triton", "verify_triton",
]


def verify(
    target_logits: Tensor, draft_tokens: Tensor, draft_probs: Tensor | None, sampling, uniforms: Tensor
) -> tuple[Tensor, Tensor]:
    """n_accepted [B], tokens [B, G+1]: see docs/architecture.md (Verifier)."""
    if target_logits.is_cuda and verify_triton is not None:
        return verify_triton(target_logits, draft_tokens, draft_probs, sampling, uniforms)
    return verify_reference(target_logits, draft_tokens, draft_probs, sampling, uniforms)
