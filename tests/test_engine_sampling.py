"""Sampled speculative output must follow the target's distribution: a chi-square test through the whole engine.

The target and draft are bigram tables over 6 tokens (exact conditional probabilities are known), so 20,000
generations are cheap; the engine loop, the arms' bookkeeping, the verifier and the cache rollback are real.
"""

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

import flashspec.engine as engine_module
from flashspec import ArmConfig, BanditConfig, FlashSpecConfig, SamplingConfig, SpeculativeEngine
from flashspec.arms import DraftModelArm
from flashspec.models import CausalLM, Scores
from flashspec.verify import process_logits

V, DRAWS, PROMPT = 6, 20_000, [0, 3]


class BigramLM(CausalLM):
    """Next-token logits depend on the last token only; the cache is just the fed ids."""

    def __init__(self, table: torch.Tensor) -> None:
        self.table, self.vocab_size, self.max_context = table, table.shape[1], 64
        self.length = 0

    def reset(self) -> None:
        self.length = 0

    def forward(self, tokens, parents=None) -> Scores:
        self.length += len(tokens)
        return Scores(self.table[tokens.cpu()], torch.zeros(len(tokens), 1))

    def crop(self, length: int) -> None:
        self.length = min(length, self.length)


class NoTokenizer:
    eos_token_id = None

    def decode(self, ids, skip_special_tokens=False) -> str:
        return ""


def tables(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    target = torch.randn(V, V, generator=g) * 1.5
    return target, target + torch.randn(V, V, generator=g)  # a related but different draft


def engine_with(monkeypatch, sampling: SamplingConfig, gamma: int) -> SpeculativeEngine:
    target, draft = tables(0)
    monkeypatch.setattr(engine_module, "load_model", lambda name, cfg: (BigramLM(target), NoTokenizer()))
    monkeypatch.setattr(engine_module, "build_arm", lambda *a: DraftModelArm(BigramLM(draft)))
    cfg = FlashSpecConfig(
        arms=[ArmConfig("draft_model")], gammas=[gamma], bandit=BanditConfig("fixed"), sampling=sampling
    )
    return SpeculativeEngine(cfg)


def expected_pairs(sampling: SamplingConfig) -> np.ndarray:
    """Exact joint distribution of new tokens 2 and 3 (the first comes from the prefill; 2-4 from one verified step)."""
    p = process_logits(tables(0)[0], sampling).double()  # p[a, b] = P(next = b | last = a)
    first = p[PROMPT[-1]]
    second = first @ p
    return (second[:, None] * p).flatten().numpy()


def pair_counts(engine: SpeculativeEngine, sampling: SamplingConfig) -> np.ndarray:
    counts = np.zeros(V * V)
    for seed in range(DRAWS):
        s = SamplingConfig(sampling.temperature, sampling.top_k, sampling.top_p, seed=seed)
        out = engine.generate(PROMPT, max_new_tokens=4, sampling=s).token_ids
        counts[out[1] * V + out[2]] += 1
    return counts


def chi_square_p(counts: np.ndarray, expected: np.ndarray) -> float:
    keep = expected * counts.sum() >= 5  # bins with too little mass are pooled into one
    f_obs = np.append(counts[keep], counts[~keep].sum())
    f_exp = np.append(expected[keep], expected[~keep].sum())
    f_obs, f_exp = f_obs[f_exp > 0], f_exp[f_exp > 0]
    return chisquare(f_obs, f_exp * f_obs.sum() / f_exp.sum()).pvalue


@pytest.mark.parametrize("sampling", [SamplingConfig(temperature=1.0), SamplingConfig(temperature=1.0, top_p=0.9)])
def test_speculative_sampling_follows_the_target(monkeypatch, sampling):
    engine = engine_with(monkeypatch, sampling, gamma=2)
    counts = pair_counts(engine, sampling)
    assert chi_square_p(counts, expected_pairs(sampling)) > 1e-3


def test_chi_square_rejects_a_verifier_that_always_accepts(monkeypatch):
    sampling = SamplingConfig(temperature=1.0)
    engine = engine_with(monkeypatch, sampling, gamma=2)

    def accept_all(logits, tokens, probs, sampling, u):
        bonus = torch.multinomial(torch.softmax(logits[:, -1], -1), 1)
        return torch.full((1,), tokens.shape[1]), torch.cat([tokens, bonus], dim=1)

    engine.verify = accept_all
    counts = pair_counts(engine, sampling)
    assert chi_square_p(counts, expected_pairs(sampling)) < 1e-6
