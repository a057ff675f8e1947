"""Greedy speculative output must be token-identical to greedy autoregressive output of the same target."""

import random
from functools import cache

import pytest
import torch

from flashspec import ArmConfig, BanditConfig, FlashSpecConfig, SpeculativeEngine, TargetConfig
from flashspec.bandit import SELECTORS

MAX_NEW = 24
ARMS = [ArmConfig(kind="prompt_lookup"), ArmConfig(kind="draft_model", model="tiny-draft")]
# Every policy and gamma on the native path; the Hugging Face fallback with two policies.
CASES = [("native", p, g) for p in sorted(SELECTORS) for g in (1, 2, 4, 8)]
CASES += [("hf", p, g) for p in ("fixed", "ucb1") for g in (1, 4)]


def make_prompts(n: int = 20) -> list[str]:
    """Half free text, half repetitive (so prompt lookup finds matches and drafts get accepted)."""
    rng = random.Random(1234)
    words = "the cat sat on a mat while def return self value list for in range print".split()
    prompts = [" ".join(rng.choice(words) for _ in range(rng.randint(2, 12))) for _ in range(n // 2)]
    prompts += [" ".join(rng.sample(words, 3)) * rng.randint(2, 4) for _ in range(n - n // 2)]
    return prompts


PROMPTS = make_prompts()


@cache
def autoregressive(backend: str) -> tuple[dict[str, list[int]], SpeculativeEngine]:
    """Greedy autoregressive output of the target (our engine with no drafting), per prompt."""
    engine = SpeculativeEngine(FlashSpecConfig(target=TargetConfig(backend=backend), bandit=BanditConfig("none")))
    return {p: engine.generate(p, MAX_NEW).token_ids for p in PROMPTS}, engine


@pytest.mark.parametrize("backend", ["native", "hf"])
def test_autoregressive_matches_hf_generate(backend):
    outputs, engine = autoregressive(backend)
    model, tok = engine.target.model, engine.tokenizer
    for p in PROMPTS:
        ids = torch.tensor([tok(p)["input_ids"]])
        hf = model.generate(ids, max_new_tokens=MAX_NEW, do_sample=False, pad_token_id=tok.pad_token_id)
        assert outputs[p] == hf[0, ids.shape[1] :].tolist(), p


@pytest.mark.parametrize(("backend", "policy", "gamma"), CASES)
def test_greedy_speculative_is_token_identical(backend, policy, gamma):
    outputs, _ = autoregressive(backend)
    for arm in range(len(ARMS)) if policy == "fixed" else [0]:
        cfg = FlashSpecConfig(
            target=TargetConfig(backend=backend), arms=ARMS, gammas=[gamma], bandit=BanditConfig(policy, arm=arm)
        )
        engine = SpeculativeEngine(cfg)
        accepted = 0
        for p in PROMPTS:
            out = engine.generate(p, MAX_NEW)
            assert out.token_ids == outputs[p], (policy, gamma, arm, p)
            accepted += sum(a.accepted for a in out.arms.values())
        assert accepted > 0, "no draft token was ever accepted: the comparison proved nothing"


def test_bandit_picks_gamma_too():
    outputs, _ = autoregressive("native")
    engine = SpeculativeEngine(FlashSpecConfig(arms=ARMS, gammas=[1, 4], bandit=BanditConfig("ucb1")))
    assert engine.arm_names == ["prompt_lookup@1", "prompt_lookup@4", "draft:tiny-draft@1", "draft:tiny-draft@4"]
    for p in PROMPTS[:5]:
        assert engine.generate(p, MAX_NEW).token_ids == outputs[p]
