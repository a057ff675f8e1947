"""What the arms draft, pinned: prompt lookup's proposals for known contexts (match rule, n-gram order), its
acceptance on the shipped family, and the target rows a tree arm hears of after each step."""

import pytest
import torch
from test_engine_lossless import PROMPTS

from flashspec import ArmConfig, BanditConfig, FlashSpecConfig, SamplingConfig, SpeculativeEngine, TargetConfig
from flashspec.arms import Arm, Draft, PromptLookupArm

GREEDY = SamplingConfig()


def propose(context: list[int], gamma: int, ngram_max: int = 3, ngram_min: int = 1) -> list[int]:
    arm = PromptLookupArm(ngram_max, ngram_min)
    return arm.propose(torch.tensor(context), gamma, GREEDY, None).tokens.tolist()


@pytest.mark.parametrize(
    ("context", "gamma", "ngram_max", "ngram_min", "expected"),
    [
        # The suffix [1, 2, 3] occurred at 0: propose what followed it, starting right after the match.
        ([1, 2, 3, 9, 1, 2, 3], 2, 3, 1, [9, 1]),
        ([1, 2, 3, 9, 1, 2, 3], 4, 3, 1, [9, 1, 2, 3]),
        # The latest earlier occurrence wins: [5, 1] at 0 and 3, the match at 3 is followed by 8.
        ([5, 1, 7, 5, 1, 8, 5, 1], 3, 2, 1, [8, 5, 1]),
        # Longest n-gram first: the 3-gram [2, 3, 4] (followed by 9) beats the later 2-gram [3, 4] (followed by 7).
        ([1, 2, 3, 4, 9, 3, 4, 7, 2, 3, 4], 2, 3, 1, [9, 3]),
        ([1, 2, 3, 4, 9, 3, 4, 7, 2, 3, 4], 2, 2, 1, [7, 2]),
        # Only a 1-gram matches: found at ngram_min=1, nothing at ngram_min=2.
        ([6, 8, 2, 5, 8], 2, 3, 1, [2, 5]),
        ([6, 8, 2, 5, 8], 2, 3, 2, []),
        # The proposal stops at the end of the context; no match at all drafts nothing.
        ([4, 7, 4], 5, 3, 1, [7, 4]),
        ([1, 2, 3], 3, 3, 1, []),
        ([7], 3, 3, 1, []),
    ],
)
def test_prompt_lookup_proposals(context, gamma, ngram_max, ngram_min, expected):
    assert propose(context, gamma, ngram_max, ngram_min) == expected


def lookup_tree(context: list[int], gamma: int, candidates: int) -> tuple[list[int], list[int] | None]:
    draft = PromptLookupArm(3, 1, candidates).propose(torch.tensor(context), gamma, GREEDY, None)
    return draft.tokens.tolist(), None if draft.parents is None else draft.parents.tolist()


@pytest.mark.parametrize(
    ("context", "gamma", "candidates", "expected"),
    [
        # [5, 1] occurred at 3 (then 8, 5) and at 0 (then 7, 5): the latest's continuation first, the other a branch.
        ([5, 1, 7, 5, 1, 8, 5, 1], 2, 2, ([8, 5, 7, 5], [-1, 0, -1, 2])),
        # One candidate: the latest's chain, as without the option.
        ([5, 1, 7, 5, 1, 8, 5, 1], 2, 1, ([8, 5], None)),
        # Continuations sharing a prefix share its nodes: [4, 9, 2] and [4, 9, 3] under one 4, 9.
        ([6, 4, 9, 3, 6, 4, 9, 2, 6], 3, 2, ([4, 9, 2, 3], [-1, 0, 1, 1])),
        # A continuation that is a prefix of one already taken adds nothing: still a chain.
        ([3, 7, 3, 7, 3], 3, 3, ([7, 3], None)),
        # Identical continuations count once: the tree waits for a different one, or stays a chain.
        ([2, 5, 2, 5, 9, 2], 1, 2, ([5], None)),
    ],
)
def test_prompt_lookup_tree_proposals(context, gamma, candidates, expected):
    assert lookup_tree(context, gamma, candidates) == expected


def test_prompt_lookup_tree_is_greedy_lossless_on_the_tiny_target():
    """The tree of the 3 latest continuations decodes exactly what autoregressive decoding does, and branches."""
    prompts = [p for p in PROMPTS if len(set(p.split())) < len(p.split())]  # repetitive: lookups find matches
    ar = SpeculativeEngine(FlashSpecConfig(bandit=BanditConfig("none")))
    arm = ArmConfig("prompt_lookup", params={"candidates": 3})
    spec = SpeculativeEngine(FlashSpecConfig(arms=[arm], gammas=[4], bandit=BanditConfig("fixed")))
    trees, lookup = [0], spec.pairs[0][0]
    propose = lookup.propose

    def counting(*args):
        draft = propose(*args)
        trees[0] += draft.parents is not None
        return draft

    lookup.propose = counting
    for prompt in prompts:
        assert spec.generate(prompt, 24).token_ids == ar.generate(prompt, 24).token_ids, prompt
    assert trees[0] > 0, "no draft branched: the test would not see a tree"


def test_prompt_lookup_params_are_checked():
    with pytest.raises(ValueError, match="unknown prompt_lookup params"):
        SpeculativeEngine(FlashSpecConfig(arms=[ArmConfig("prompt_lookup", params={"width": 2})]))
    with pytest.raises(ValueError, match="candidates=0"):
        PromptLookupArm(3, 1, 0)


FAMILY = "results/models/flashspec-target"
REPETITIVE = ["The cat sat on the mat. The cat sat on the mat. The cat sat on the",
              "def add(a, b):\n    return a + b\n\ndef add(a, b):\n    return a + b\n\ndef add("]


def test_prompt_lookup_is_accepted_on_the_shipped_family():
    """Greedy on repetitive prompts the trained target continues the repetition, so most lookups are right
    (a lookup one token off accepted 0 of 242 drafted tokens)."""
    cfg = FlashSpecConfig(target=TargetConfig(model=FAMILY), arms=[ArmConfig("prompt_lookup")], gammas=[4],
                          bandit=BanditConfig("fixed"))
    engine = SpeculativeEngine(cfg)
    drafted = accepted = 0
    for prompt in REPETITIVE:
        stats = engine.generate(prompt, max_new_tokens=32).arms["prompt_lookup"]
        drafted, accepted = drafted + stats.drafted, accepted + stats.accepted
    assert drafted >= 20 and accepted >= 0.4 * drafted, (accepted, drafted)


class OracleTreeArm(Arm):
    """Drafts a tree whose accepted path is not the block's prefix: root 0 is wrong, root 1 right, its child 2
    wrong and child 3 right; the accepted path is nodes 1, 3 (block rows 0, 2, 4, not 0, 1, 2). Records the
    rows of every target forward it hears of."""

    name, tree = "oracle_tree", True

    def __init__(self, truth: list[int], vocab: int) -> None:
        self.truth, self.vocab, self.heard = truth, vocab, []

    def propose(self, context, gamma, sampling, generator) -> Draft:
        a, b = self.truth[len(context) : len(context) + 2]
        wrong = [(a + 1) % self.vocab, (b + 1) % self.vocab]
        return Draft(torch.tensor([wrong[0], a, wrong[1], b]), parents=torch.tensor([-1, -1, 1, 1]))

    def observe_target(self, start, scores) -> None:
        self.heard.append((start, scores.hidden.clone()))


def test_tree_arms_hear_the_accepted_paths_rows():
    prompt, max_new = [5, 9, 2, 7], 12
    ar = SpeculativeEngine(FlashSpecConfig(bandit=BanditConfig("none")))
    out = ar.generate(prompt, max_new + 2).token_ids
    arm = OracleTreeArm(prompt + out, ar.target.vocab_size)
    engine = SpeculativeEngine(FlashSpecConfig(bandit=BanditConfig("fixed"), gammas=[4]), target=ar.target,
                               tokenizer=ar.tokenizer, arms=[arm])
    result = engine.generate(prompt, max_new)
    assert result.token_ids == out[:max_new] and result.arms["oracle_tree"].accepted >= 6
    # Every position's row, as a forward over the whole committed sequence computes it.
    ar.target.reset()
    reference = ar.target.forward(torch.tensor(prompt + result.token_ids)).hidden
    assert len(arm.heard) == result.steps and [s for s, _ in arm.heard[:3]] == [0, 4, 7]  # prefill, 3 per step
    for start, hidden in arm.heard:
        torch.testing.assert_close(hidden, reference[start : start + len(hidden)], atol=1e-4, rtol=1e-4)
