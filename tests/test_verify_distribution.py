"""Losslessness of the verifier itself: whatever the draft distribution q, the emitted tokens follow the
target's processed distribution p. Chi-square tests on a small vocabulary, many rows at once."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare

from flashspec.config import SamplingConfig
from flashspec.verify import process_logits, verify_reference, verify_triton

VOCAB = 8
TARGET = torch.tensor([[1.2, 0.9, 0.6, 0.3, 0.0, -0.3, -0.6, -0.9],  # position 0
                       [-0.5, 0.8, 0.1, 1.1, -0.2, 0.4, 0.6, -0.8],  # position 1
                       [0.3, -0.4, 0.9, 0.0, 0.5, -0.7, 1.0, 0.2]])  # bonus position
DRAFT = torch.tensor([[-1.0, -0.6, -0.2, 0.2, 0.6, 1.0, 1.4, 1.8],  # q leans where p does not
                      [0.9, -0.6, 0.5, -1.0, 0.7, 0.0, -0.3, 0.8]]).softmax(-1)
SAMPLINGS = [SamplingConfig(temperature=1.0), SamplingConfig(temperature=1.0, top_p=0.9),
             SamplingConfig(temperature=1.0, top_k=3)]


def draw(verify, rows: int, sampling: SamplingConfig, seed: int, device: torch.device | str = "cpu"
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """One verify call over `rows` independent rows on `device`: drafts sampled from q, fresh uniforms; the
    outcome comes back on the CPU."""
    gen = torch.Generator().manual_seed(seed)
    draft_probs = DRAFT.expand(rows, -1, -1).contiguous()
    drafts = torch.multinomial(DRAFT, rows, replacement=True, generator=gen).T.contiguous()
    logits = TARGET.expand(rows, -1, -1).contiguous()
    inputs = [t.to(device) for t in (logits, drafts, draft_probs, torch.rand(rows, 3, generator=gen))]
    n, tokens = verify(*inputs[:3], sampling, inputs[3])
    return n.cpu(), tokens.cpu()


def chi_square_p(tokens: torch.Tensor, p: torch.Tensor) -> float:
    """p-value of the observed tokens against distribution p; tokens outside p's support fail outright."""
    counts = torch.bincount(tokens, minlength=VOCAB).double()
    support = p > 0
    assert counts[~support].sum() == 0, f"tokens outside the support: {counts.tolist()}"
    expected = p[support].double() * len(tokens)
    return chisquare(counts[support], expected * counts.sum() / expected.sum()).pvalue


def position_p_values(n: torch.Tensor, tokens: torch.Tensor, sampling: SamplingConfig) -> tuple[float, float]:
    """The first emitted token against p_0; the second, where the first draft was accepted, against p_1."""
    p = process_logits(TARGET, sampling)
    return chi_square_p(tokens[:, 0], p[0]), chi_square_p(tokens[n >= 1, 1], p[1])


@pytest.mark.parametrize("sampling", SAMPLINGS, ids=["t1", "topp0.9", "topk3"])
def test_reference_is_lossless(sampling: SamplingConfig) -> None:
    n, tokens = draw(verify_reference, 20000, sampling, seed=sampling.top_k)
    first, second = position_p_values(n, tokens, sampling)
    assert first > 1e-3 and second > 1e-3, (first, second)


def test_a_verifier_that_accepts_everything_is_caught() -> None:
    # The test has power: accepting every draft emits q, not p.
    def accept_all(logits, drafts, draft_probs, sampling, uniforms):
        return torch.full((len(drafts),), drafts.shape[1]), torch.cat([drafts, drafts[:, :1]], 1)

    n, tokens = draw(accept_all, 20000, SAMPLINGS[0], seed=0)
    first, second = position_p_values(n, tokens, SAMPLINGS[0])
    assert first < 1e-6 and second < 1e-6, (first, second)


@pytest.mark.parametrize("sampling,rows", [(SAMPLINGS[0], 150), (SAMPLINGS[1], 80)], ids=["t1", "topp0.9"])
def test_triton_is_the_reference_on_these_draws(sampling: SamplingConfig, rows: int, device) -> None:
    # The interpreter runs some twenty rows a second: fewer draws, each identical to the reference's, which
    # carries the reference's 20000-draw test over; the chi-square here catches a gross error on its own.
    ours = draw(verify_triton, rows, sampling, seed=1, device=device)
    theirs = draw(verify_reference, rows, sampling, seed=1, device=device)
    for row, k in enumerate(theirs[0].tolist()):
        assert ours[0][row] == k and torch.equal(ours[1][row, : k + 1], theirs[1][row, : k + 1]), row
    first, second = position_p_values(*ours, sampling)
    assert first > 1e-3 and second > 1e-3, (first, second)
