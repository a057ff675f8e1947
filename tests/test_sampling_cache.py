"""Sampled speculative output follows the target's distribution when the target's logits depend on its cache.

`PrefixLM`'s next-token logits depend on the last token and on the sum of every cached token (mod 3), so a
rollback that keeps a rejected token, or a bonus token drawn from the wrong row, changes the distribution of
later tokens. Chi-square tests on the pair of new tokens 4 and 5 (after several steps with rejections) cover
sampled and deterministic drafts, two bandits switching arms, the bonus token and temperature != 1 with
top-k / top-p; each kind of mistake is shown to fail (a deliberately broken variant).
"""

import numpy as np
import pytest
import torch
from test_engine_sampling import NoTokenizer, chi_square_p

from flashspec import ArmConfig, BanditConfig, FlashSpecConfig, SamplingConfig, SpeculativeEngine
from flashspec.arms import DraftModelArm, PromptLookupArm
from flashspec.models import CausalLM, Scores
from flashspec.verify import process_logits, verify_reference

V, M, PROMPT, FIRST = 5, 3, [0, 3, 1, 4, 2, 3], 3  # FIRST: index of the first of the two new tokens counted


class PrefixLM(CausalLM):
    """Row i's logits: table[token_i, (sum of the cached ids up to and including token_i) % M]. The cache is the
    list of ids, rolled back exactly as a KV cache is (or not, when `leak` keeps one rejected entry)."""

    supports_tree = True

    def __init__(self, table: torch.Tensor, leak: bool = False) -> None:
        self.table, self.leak, self.vocab_size, self.max_context = table, leak, table.shape[0], 64
        self.ids: list[int] = []

    @property
    def length(self) -> int:
        return len(self.ids)

    def reset(self) -> None:
        self.ids = []

    def forward(self, tokens, parents=None) -> Scores:
        tokens = tokens.tolist()
        parents = [i - 1 for i in range(len(tokens))] if parents is None else parents.tolist()
        base, sums = sum(self.ids), []
        for tok, parent in zip(tokens, parents, strict=True):
            sums.append((sums[parent] if parent >= 0 else base) + tok)
        self.ids += tokens
        rows = self.table[torch.tensor(tokens), torch.tensor(sums) % M]
        return Scores(rows, torch.zeros(len(tokens), 1))

    def crop(self, length: int) -> None:
        self.ids = self.ids[: length + (self.leak and length < len(self.ids))]

    def keep_path(self, start: int, nodes) -> None:
        self.ids = self.ids[:start] + [self.ids[start + int(n)] for n in nodes]


def tables() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    target = torch.randn(V, M, V, generator=g) * 1.5
    return target, target + 2 * torch.randn(V, M, V, generator=g)  # a related but different draft


def expected_pairs(sampling: SamplingConfig) -> np.ndarray:
    """Exact joint distribution of new tokens FIRST and FIRST + 1, by dynamic programming over the state
    (last token, cache sum % M)."""
    p = process_logits(tables()[0], sampling).double()  # p[a, s, b]
    state = torch.zeros(V, M, dtype=torch.float64)
    state[PROMPT[-1], sum(PROMPT) % M] = 1

    def step(state: torch.Tensor) -> torch.Tensor:
        nxt = torch.zeros_like(state)
        for a in range(V):
            for s in range(M):
                for b in range(V):
                    nxt[b, (s + b) % M] += state[a, s] * p[a, s, b]
        return nxt

    for _ in range(FIRST + 1):  # the prefill's token, then new tokens 1 to FIRST
        state = step(state)
    first = state.sum(1)  # P(token FIRST = a)
    pairs = torch.zeros(V, V, dtype=torch.float64)
    for a in range(V):
        for s in range(M):
            pairs[a] += state[a, s] * p[a, s]
    assert torch.allclose(pairs.sum(1), first)
    return pairs.flatten().numpy()


def make_engine(arms: str, policy: str, sampling: SamplingConfig, leak: bool = False, gamma: int = 2):
    target, draft = tables()
    built = {"draft": [DraftModelArm(PrefixLM(draft))], "lookup": [PromptLookupArm()],
             "both": [PromptLookupArm(), DraftModelArm(PrefixLM(draft))]}[arms]
    cfg = FlashSpecConfig(arms=[ArmConfig()] * len(built), gammas=[gamma],
                          bandit=BanditConfig(policy, reward="accepted_tokens"), sampling=sampling)
    return SpeculativeEngine(cfg, target=PrefixLM(target, leak), tokenizer=NoTokenizer(), arms=built)


def pair_counts(engine: SpeculativeEngine, sampling: SamplingConfig, draws: int) -> tuple[np.ndarray, int]:
    counts, accepted = np.zeros(V * V), 0
    for seed in range(draws):
        s = SamplingConfig(sampling.temperature, sampling.top_k, sampling.top_p, seed=seed)
        out = engine.generate(PROMPT, max_new_tokens=FIRST + 2, sampling=s)
        counts[out.token_ids[FIRST] * V + out.token_ids[FIRST + 1]] += 1
        accepted += sum(a.accepted for a in out.arms.values())
    return counts, accepted


def p_value(engine: SpeculativeEngine, sampling: SamplingConfig, draws: int) -> float:
    counts, accepted = pair_counts(engine, sampling, draws)
    assert accepted > draws // 2, "drafts were rarely accepted: the test would not exercise the rollback"
    return chi_square_p(counts, expected_pairs(sampling))


T1 = SamplingConfig(temperature=1.0)
WARM = SamplingConfig(temperature=0.7, top_k=4, top_p=0.9)
CASES = [("draft", "fixed", T1), ("lookup", "fixed", T1), ("both", "thompson", T1), ("both", "exp3", T1),
         ("draft", "fixed", WARM), ("lookup", "fixed", WARM)]


@pytest.mark.parametrize(("arms", "policy", "sampling"), CASES[:2])
def test_sampling_with_a_cache_follows_the_target(arms, policy, sampling):
    assert p_value(make_engine(arms, policy, sampling), sampling, 4000) > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize(("arms", "policy", "sampling"), CASES)
def test_sampling_with_a_cache_follows_the_target_closely(arms, policy, sampling):
    assert p_value(make_engine(arms, policy, sampling), sampling, 20_000) > 1e-3


@pytest.mark.parametrize("arms", ["draft", "lookup"])
def test_chi_square_rejects_a_rollback_that_keeps_a_rejected_token(arms):
    engine = make_engine(arms, "fixed", T1, leak=True)
    assert p_value(engine, T1, 4000) < 1e-6


def bonus_counts(verify, logits: torch.Tensor, draws: int) -> np.ndarray:
    """Bonus tokens of `draws` verifications of a draft the target always accepts (its tokens have p = 1)."""
    g = logits.shape[0] - 1
    drafts = logits[:g].argmax(-1).expand(draws, -1).contiguous()
    u = torch.rand(draws, g + 1, generator=torch.Generator().manual_seed(0))
    n, tokens = verify(logits.expand(draws, -1, -1), drafts, None, T1, u)
    assert bool((n == g).all())
    return np.bincount(tokens[:, g].numpy(), minlength=logits.shape[1])


def bonus_from_row_before_last(logits, *args):
    """Broken: the bonus token drawn from the last draft's row instead of the row after it."""
    return verify_reference(torch.cat([logits[:, :-1], logits[:, -2:-1]], 1), *args)


def test_bonus_token_follows_the_last_row():
    """Chain of 3 deterministic drafts with p(draft) = 1 and a spread last row: the bonus token must follow
    the last row (drawn from the row before, it is shown to fail)."""
    g, draws = 3, 20_000
    logits = torch.full((g + 1, 6), -30.0)
    logits[torch.arange(g), torch.tensor([2, 0, 4])] = 30.0
    logits[g] = torch.tensor([0.5, -1.0, 1.0, 0.0, -0.5, 0.8])
    expected = torch.softmax(logits[g], -1).double().numpy()
    assert chi_square_p(bonus_counts(verify_reference, logits, draws), expected) > 1e-3
    assert chi_square_p(bonus_counts(bonus_from_row_before_last, logits, draws), expected) < 1e-6
