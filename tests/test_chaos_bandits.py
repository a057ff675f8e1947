"""Adversarial bandit tests (`make test-chaos`): the policies face arms whose acceptance changes mid-request
(two arms swap places), an arm that is perfect early and useless later, and arms that raise. The output
stays the target's in every case (greedy: token-identical; sampled: a chi-square); the tests show which
policies recover.

The target is a bigram table, cheap enough for requests of hundreds of steps, and the arms are the
controlled-acceptance arm of flashspec/arms/controlled.py with a rate that follows a schedule over the
request's position. Rewards are accepted tokens: deterministic, unlike tokens/s.

Findings the tests pin down:
* UCB1, Thompson, epsilon-greedy, EXP3, discounted and sliding-window UCB all end up on the better arm; the
  two that forget (discounted, sliding-window UCB) leave a fading arm sooner than UCB1. EXP3, tuned for a
  1000-step horizon, barely prefers either arm before the switch; BanditSpec's EXP3Spec (exponential weights)
  and UCBSpec (UCB1 with a radius twice this package's) still explore both arms then too, and recover all the
  same.
* Hedge does not recover from an arm that fades. Its full-information rewards are censored by the draft it
  played: when that draft is rejected at its first token, the verified block reveals a single token, so every
  arm's would-be reward is one token and the lead the fading arm built up never shrinks; Hedge learns the
  other arm is better only on the rare steps it plays it. It does recover from an arm that raises, which the
  engine rewards with 0.
* An arm that raises sits out the rest of the request with one RuntimeWarning (its steps decode without a
  draft); the next request tries it again.
"""

import functools
import warnings

import numpy as np
import pytest
import torch
from scipy.stats import chisquare
from test_engine_sampling import BigramLM, NoTokenizer, expected_pairs, tables

from flashspec import BanditConfig, FlashSpecConfig, SamplingConfig, SpeculativeEngine
from flashspec.arms import Arm, DraftModelArm
from flashspec.arms.controlled import ControlledArm
from flashspec.bandit import SELECTORS

V, NEW_TOKENS, SWITCH, GAMMA = 32, 800, 260, 4
PROMPT = torch.tensor([0, 3])
TABLE = torch.randn(V, V, generator=torch.Generator().manual_seed(0)) * 3
LEARNING = [p for p in SELECTORS if p != "fixed"]
RECOVER = [p for p in LEARNING if p != "hedge"]
FORGETTING = ["discounted_ucb", "sliding_window_ucb"]
# (arm 0's rate, arm 1's rate) as functions of the new tokens so far; None raises. After SWITCH arm 1 is better.
SCENARIOS = {
    "swap": (lambda n: 0.9 if n < SWITCH else 0.1, lambda n: 0.1 if n < SWITCH else 0.9),
    "fade": (lambda n: 1.0 if n < SWITCH else 0.0, lambda n: 0.6),
    "crash": (lambda n: 1.0 if n < SWITCH else None, lambda n: 0.6),
}


def bigram() -> BigramLM:
    model = BigramLM(TABLE)
    model.max_context = len(PROMPT) + NEW_TOKENS + 2 * GAMMA
    return model


TARGET = bigram()


class ScheduledArm(ControlledArm):
    """A controlled arm whose rate is `schedule(new tokens so far)`; a None rate raises, as a broken drafter would."""

    def __init__(self, name: str, schedule) -> None:
        super().__init__(TARGET, DraftModelArm(bigram()), rate=0.5, horizon=NEW_TOKENS + GAMMA)
        self.name, self.schedule = name, schedule

    def propose(self, context, gamma, sampling, generator):
        rate = self.schedule(len(context) - self.prompt_len)
        if rate is None:
            raise RuntimeError("the drafter crashed")
        self.rate = rate
        return super().propose(context, gamma, sampling, generator)


def engine(policy: str, arms: list[Arm], target=TARGET, **config) -> SpeculativeEngine:
    bandit = BanditConfig(policy, reward="accepted_tokens")
    return SpeculativeEngine(FlashSpecConfig(bandit=bandit, gammas=[GAMMA], **config), target=target,
                             tokenizer=NoTokenizer(), arms=arms)


@functools.cache
def autoregressive() -> list[int]:
    return engine("none", []).generate(PROMPT, NEW_TOKENS).token_ids


@functools.cache
def run(scenario: str, policy: str):
    """The request under `policy`, its warnings, and the new tokens before each decoding step."""
    arms = [ScheduledArm(name, schedule) for name, schedule in zip(("early", "late"), SCENARIOS[scenario], strict=True)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = engine(policy, arms).generate(PROMPT, NEW_TOKENS)
    before = np.cumsum([1, *out.emitted])[:-1]  # the prefill emits the first token
    return out, [str(w.message) for w in caught], before


def share_of_late(scenario: str, policy: str, phase: str) -> float:
    """The share of steps that played arm 1 ("late"): before the switch, after it, or in its last quarter."""
    out, _, before = run(scenario, policy)
    trace = np.array(out.trace)
    after = trace[before >= SWITCH]
    steps = {"before": trace[before < SWITCH], "after": after, "last quarter": after[len(after) * 3 // 4 :]}[phase]
    return float(np.mean(steps == 1))


@pytest.mark.parametrize("policy", LEARNING)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_output_stays_the_targets(scenario, policy):
    out, caught, _ = run(scenario, policy)
    assert out.token_ids == autoregressive()
    crashed = ["early"] if scenario == "crash" else []
    assert out.failed_arms == crashed
    assert len(caught) == len(crashed) and all("'early' raised while drafting" in m for m in caught)


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("policy", [p for p in LEARNING if p not in ("exp3", "exp3spec", "ucbspec")])
def test_policies_first_learn_the_early_arm(scenario, policy):
    """What makes the scenarios adversarial: before the switch the policies have settled on arm 0."""
    assert share_of_late(scenario, policy, "before") < 0.15


@pytest.mark.parametrize("policy", RECOVER)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_policy_recovers(scenario, policy):
    assert share_of_late(scenario, policy, "last quarter") > 0.65


@pytest.mark.parametrize("scenario", ["swap", "fade"])
def test_hedge_stays_with_a_fading_arm(scenario):
    """Censored full information (see the module docstring): Hedge stays with the arm that faded."""
    assert share_of_late(scenario, "hedge", "last quarter") < 0.5


def test_hedge_recovers_from_an_arm_that_raises():
    assert share_of_late("crash", "hedge", "last quarter") > 0.65


@pytest.mark.parametrize("scenario", ["fade", "crash"])
@pytest.mark.parametrize("policy", FORGETTING)
def test_forgetting_policies_leave_a_fading_arm_sooner(scenario, policy):
    assert share_of_late(scenario, policy, "after") > share_of_late(scenario, "ucb1", "after")


def test_fixed_policy_on_a_crashed_arm_decodes_autoregressively():
    out, caught, before = run("crash", "fixed")  # fixed plays arm 0, which raises at SWITCH
    assert out.token_ids == autoregressive() and len(caught) == 1
    emitted = np.array(out.emitted)
    assert (emitted[before >= SWITCH] == 1).all() and (emitted[before < SWITCH] == GAMMA + 1).all()
    assert out.arms["early"].drafted == GAMMA * int((before < SWITCH).sum())


class BrokenArm(Arm):
    """Raises on every draft, after drawing from the engine's random generator (a partial draft's cost)."""

    name = "broken"

    def propose(self, context, gamma, sampling, generator):
        torch.rand(gamma, generator=generator)
        raise ValueError("no draft today")


def test_an_arm_that_always_raises_sits_out_each_request_with_one_warning():
    good = ScheduledArm("good", lambda n: 0.8)
    spec = engine("ucb1", [BrokenArm(), good])
    for _ in range(2):
        with pytest.warns(RuntimeWarning, match="'broken' raised while drafting .ValueError: no draft today.") as w:
            out = spec.generate(PROMPT, 64)
        assert len(w) == 1 and out.failed_arms == ["broken"]
        assert out.token_ids == autoregressive()[:64]
        assert out.arms["broken"].drafted == 0 and out.arms["good"].accepted > 0
    assert spec.get_metrics()["arms"]["broken"]["failed_requests"] == 2


def test_sampling_with_an_arm_that_raises_follows_the_target():
    """Sampled output keeps the target's law when an arm raises (UCB1 plays it first, so the first step decodes
    without a draft) and a real draft model drafts the next: new tokens 2 and 3, exact bigram probabilities."""
    sampling, draws = SamplingConfig(temperature=1.0), 4000
    target, draft = (BigramLM(t) for t in tables(0))
    spec = engine("ucb1", [BrokenArm(), DraftModelArm(draft)], target=target, sampling=sampling)
    counts = np.zeros(len(target.table) ** 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for seed in range(draws):
            out = spec.generate([0, 3], 4, SamplingConfig(temperature=1.0, seed=seed)).token_ids
            counts[out[1] * len(target.table) + out[2]] += 1
    expected = expected_pairs(sampling) * draws
    keep = expected >= 5  # bins with too little mass are pooled into one
    observed, expected = np.append(counts[keep], counts[~keep].sum()), np.append(expected[keep], expected[~keep].sum())
    assert chisquare(observed, expected * observed.sum() / expected.sum()).pvalue > 1e-3
