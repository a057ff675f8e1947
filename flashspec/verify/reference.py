"""Speculative sampling in plain PyTorch: the specification the fused Triton kernel must match.

Standard speculative sampling (Leviathan et al. 2023, Chen et al. 2023): draft j is accepted iff
u_j * q_j(x_j) < p_j(x_j); at the first rejection the target samples from norm(max(p_j - q_j, 0)),
and when every draft is accepted it samples a bonus token from p_G. The output is distributed exactly
as the target's own samples, whatever the draft.

Thresholds (top-k, top-p) compare raw logits: dividing by a positive temperature keeps the order, and
unlike probabilities the logits are the same bits in every implementation, so the kept set is too. Sums of
probabilities (softmax normaliser, top-p mass, inverse-CDF) accumulate in float64 for the same reason.
"""

from __future__ import annotations

import torch
from torch import Tensor


def process_logits(logits: Tensor, sampling) -> Tensor:
    """The distribution [..., V] (float32) that `sampling` (temperature, top_k, top_p) draws from."""
    logits = logits.float()
    vocab = logits.shape[-1]
    if sampling.temperature == 0:  # greedy: one-hot at the first argmax
        return torch.nn.functional.one_hot(logits.argmax(-1), vocab).float()
    keep = torch.ones_like(logits, dtype=torch.bool)
    if 0 < sampling.top_k < vocab:
        keep = logits >= logits.topk(sampling.top_k, dim=-1).values[..., -1:]
    exps, mass = _exps(logits, keep, sampling.temperature)
    if sampling.top_p < 1:
        keep &= logits >= _top_p_threshold(logits, keep, exps, mass, sampling.top_p)
        exps, mass = _exps(logits, keep, sampling.temperature)
    return exps * (1 / mass).float()


def _exps(logits: Tensor, keep: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """exp(z - max z) for z = logits / temperature (0 where not kept), and their sum in float64: with
    float32 sums, implementations that add in another order would draw different tokens."""
    z = (logits / temperature).masked_fill(~keep, -torch.inf)
    exps = (z - z.amax(-1, keepdim=True)).exp()
    return exps, exps.sum(-1, keepdim=True, dtype=torch.float64)


def _top_p_threshold(logits: Tensor, keep: Tensor, exps: Tensor, mass: Tensor, top_p: float) -> Tensor:
    """Logit of the token at which the mass, summed from the most likely token down, first reaches top_p."""
    ordered, order = logits.masked_fill(~keep, -torch.inf).sort(-1, descending=True)
    cum = exps.gather(-1, order).double().cumsum(-1)
    top_p = torch.tensor(top_p, dtype=torch.float32).item()  # the value a kernel receives
    # Rounding can leave the total just under top_p: then every kept token stays.
    last_kept = keep.sum(-1, keepdim=True) - 1
    first = (cum < top_p * mass).sum(-1, keepdim=True).minimum(last_kept)
    return ordered.gather(-1, first)


def sample_from(probs: Tensor, u: Tensor) -> Tensor:
    """Inverse-CDF sample per row of `probs` [..., V] (any non-negative mass) with uniforms `u` [...]:
    the first index whose cumulative mass (float64) exceeds u * total."""
    cdf = probs.double().cumsum(-1)
    # u < 1 keeps u * total below the total, so some index always exceeds it.
    return (cdf <= u.to(cdf.device)[..., None].double() * cdf[..., -1:]).sum(-1)


def to_device(device: torch.device, *tensors: Tensor | None) -> list[Tensor | None]:
    """The inputs on the logits' device: a caller may hand uniforms or drafts from another (a target spread
    with device_map gives logits on its last GPU, the engine's uniforms come from its own device)."""
    return [None if t is None else t.to(device) for t in tensors]


def check_inputs(
    target_logits: Tensor, draft_tokens: Tensor, draft_probs: Tensor | None, uniforms: Tensor
) -> None:
    """Shape and dtype checks shared by both implementations (no host-device synchronisation)."""
    if target_logits.dim() != 3:
        raise ValueError(f"target_logits has shape {tuple(target_logits.shape)}: expected [B, G+1, V]")
    b, g1, vocab = target_logits.shape
    expected = {"draft_tokens": (draft_tokens, (b, g1 - 1)), "uniforms": (uniforms, (b, g1))}
    if draft_probs is not None:
        expected["draft_probs"] = (draft_probs, (b, g1 - 1, vocab))
    for name, (tensor, shape) in expected.items():
        if tuple(tensor.shape) != shape:
            raise ValueError(
                f"{name} has shape {tuple(tensor.shape)}: expected {shape} to match target_logits [B, G+1, V]"
            )
    if draft_tokens.dtype != torch.int64:
        raise ValueError(f"draft_tokens has dtype {draft_tokens.dtype}: pass int64 token ids")


def verify_reference(
    target_logits: Tensor, draft_tokens: Tensor, draft_probs: Tensor | None, sampling, uniforms: Tensor
) -> tuple[Tensor, Tensor]:
    """Accept or reject G drafts per row: n_accepted [B] and tokens [B, G+1] (docs/architecture.md)."""
    check_inputs(target_logits, draft_tokens, draft_probs, uniforms)
    if not torch.isfinite(target_logits).all():
        raise ValueError(
            "non-finite logits (NaN or inf) in target_logits: check the target's weights and dtype (float16 "
            "often overflows; use bfloat16 or float32), and mask tokens with a finite value, not -inf"
        )
    b, g1, vocab = target_logits.shape
    g = g1 - 1
    draft_tokens, draft_probs, uniforms = to_device(target_logits.device, draft_tokens, draft_probs, uniforms)
    p = process_logits(target_logits, sampling)
    if draft_probs is None:  # a deterministic draft: q is one-hot at the drafted token
        draft_probs = torch.nn.functional.one_hot(draft_tokens, vocab).float()
    p_x = p[:, :g].gather(-1, draft_tokens[..., None])[..., 0]
    q_x = draft_probs.float().gather(-1, draft_tokens[..., None])[..., 0]
    accepted = uniforms[:, :g] * q_x < p_x
    n = accepted.long().cumprod(-1).sum(-1)
    rows = torch.arange(b, device=p.device)
    # Row n of q is the rejected draft's distribution; after G acceptances it is zero (a bonus sample from p).
    q = torch.cat([draft_probs.float(), draft_probs.new_zeros(b, 1, vocab, dtype=torch.float32)], 1)
    p_n = p[rows, n]
    residual = (p_n - q[rows, n]).clamp(min=0)
    # p == q up to rounding leaves no residual mass; the rejection then had probability 0, so sample p.
    residual = torch.where(residual.sum(-1, keepdim=True) > 0, residual, p_n)
    token = sample_from(residual, uniforms[:, g])
    tokens = torch.cat([draft_tokens, token[:, None]], 1)
    tokens[rows, n] = token
    return n, tokens
