"""Engine paths no other test takes: the accepted-tokens reward, a bandit carried across requests, the Triton
verifier through the engine, non-finite logits in a decoding step, and bad prompt ids or budgets."""

from functools import cache

import pytest
import torch
from test_eos_in_step import EosTokenizer, SuccessorLM

from flashspec import ArmConfig, BanditConfig, FlashSpecConfig, SamplingConfig, SpeculativeEngine

ARMS = [ArmConfig("prompt_lookup"), ArmConfig("draft_model", model="tiny-draft")]
PROMPTS = ["the cat sat on the mat the cat sat on the", "def f(x): return x def f(x): return"]


@cache
def autoregressive() -> SpeculativeEngine:
    return SpeculativeEngine(FlashSpecConfig(bandit=BanditConfig("none")))


def speculative(bandit: BanditConfig, **kwargs) -> SpeculativeEngine:
    ar = autoregressive()
    cfg = FlashSpecConfig(arms=ARMS, gammas=[3], bandit=bandit, **kwargs)
    return SpeculativeEngine(cfg, target=ar.target, tokenizer=ar.tokenizer)


def test_accepted_tokens_reward_is_the_steps_tokens_over_gamma_plus_one():
    engine = speculative(BanditConfig("ucb1", reward="accepted_tokens"))
    rewards = []
    update = engine.selector.update
    engine.selector.update = lambda arm, reward: (rewards.append((arm, reward)), update(arm, reward))
    out = engine.generate(PROMPTS[0], 24)
    assert [arm for arm, _ in rewards] == out.trace
    # Every step but the last (whose count is cut at the budget) committed emitted[i] tokens.
    assert [r for _, r in rewards[:-1]] == [e / 4 for e in out.emitted[:-1]]
    assert max(out.emitted) > 1  # some drafts were accepted, so the reward is not constant


@pytest.mark.parametrize("scope", ["request", "run"])
def test_bandit_scope(scope):
    engine = speculative(BanditConfig("ucb1", scope=scope))
    steps = [engine.generate(p, 16).steps - 1 for p in PROMPTS]  # minus the prefill
    assert sum(engine.selector.pulls) == (sum(steps) if scope == "run" else steps[-1])


# A CPU target with the Triton verifier runs the kernel in Triton's interpreter, which conftest turns on only
# where there is no CUDA; on a GPU machine tests/test_gpu.py drives the Triton verifier through the engine.
needs_interpreter = pytest.mark.skipif(torch.cuda.is_available(), reason="the Triton verifier on a CPU target needs "
                                       "Triton's interpreter, off where CUDA is (tests/test_gpu.py covers the GPU)")


@pytest.mark.parametrize("sampling", [SamplingConfig(), SamplingConfig(temperature=0.8, top_k=20, seed=3)])
@needs_interpreter
def test_triton_verifier_through_the_engine_matches_the_reference(sampling):
    """Same seed, same uniforms: the kernel (interpreted on the CPU) commits exactly the reference's tokens."""
    outputs = {}
    for verifier in ("reference", "triton"):
        engine = speculative(BanditConfig("fixed"), verifier=verifier)
        outputs[verifier] = [engine.generate(p, 12, sampling).token_ids for p in PROMPTS]
    assert outputs["triton"] == outputs["reference"]
    if sampling.greedy:
        assert outputs["reference"] == [autoregressive().generate(p, 12).token_ids for p in PROMPTS]


class GoesNonFinite(SuccessorLM):
    """Finite on the prompt, a NaN logit per row once the cache passes 6 tokens (inside a speculative step)."""

    def forward(self, tokens, parents=None):
        scores = super().forward(tokens, parents)
        if self.length > 6:
            scores.logits[:, 0] = float("nan")
        return scores


@pytest.mark.parametrize(
    ("policy", "verifier", "message"),
    [
        # The kernel does not check its input (no host sync): the engine's per-step check names the problem.
        pytest.param("fixed", "triton", "non-finite logits from the target: check its weights and dtype",
                     marks=needs_interpreter),
        pytest.param("none", "triton", "non-finite logits from the target: check its weights and dtype",
                     marks=needs_interpreter),
        ("fixed", "reference", r"non-finite logits \(NaN or inf\) in target_logits: check the target's weights"),
    ],
)
def test_non_finite_logits_in_a_decoding_step(policy, verifier, message):
    cfg = FlashSpecConfig(bandit=BanditConfig(policy), verifier=verifier)
    engine = SpeculativeEngine(cfg, target=GoesNonFinite(), tokenizer=EosTokenizer())
    with pytest.raises(ValueError, match=message):
        engine.generate([0, 1, 2, 3, 4], 10)


@pytest.mark.parametrize("ids", [[1, 2, 10_000_000], [1, -1, 2]])
def test_prompt_ids_outside_the_vocabulary(ids):
    with pytest.raises(ValueError, match=r"prompt has token ids outside the vocabulary \[0, \d+\)"):
        autoregressive().generate(ids, 4)


@pytest.mark.parametrize("budget", [0, -3])
def test_max_new_tokens_below_one(budget):
    with pytest.raises(ValueError, match=f"max_new_tokens={budget}: ask for at least one new token"):
        autoregressive().generate("hello", budget)
