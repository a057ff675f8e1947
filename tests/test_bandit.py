"""Bandit policies: they find the best arm, track a moving one, keep adversarial regret sublinear, and
reject bad input. Every run is seeded (policy seed + environment seed), so results are deterministic."""

from __future__ import annotations

import math
import random

import pytest

from flashspec.bandit import SELECTORS, EXP3Selector, HedgeSelector, Selector, make_selector

STOCHASTIC_MEANS = [0.2, 0.4, 0.5, 0.8]


def feed(selector: Selector, arm: int, rewards: list[float]) -> None:
    """Report a step's outcome in the form the policy learns from."""
    if selector.full_information:
        selector.update_all(rewards)
    else:
        selector.update(arm, rewards[arm])


def play(selector: Selector, schedule, rounds: int, env_seed: int, fractional: bool = False) -> list[int]:
    """Play arms whose mean rewards at round t are schedule(t), as Bernoulli draws or (fractional) as
    mean +- uniform 0.1 noise; return the arm chosen each round."""
    rng = random.Random(env_seed)
    chosen = []
    for t in range(rounds):
        if fractional:
            rewards = [min(1.0, max(0.0, m + rng.uniform(-0.1, 0.1))) for m in schedule(t)]
        else:
            rewards = [float(rng.random() < m) for m in schedule(t)]
        arm = selector.select()
        feed(selector, arm, rewards)
        chosen.append(arm)
    return chosen


@pytest.mark.parametrize("name", ["ucb1", "thompson"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_finds_best_stochastic_arm(name: str, seed: int) -> None:
    # UCB1 meets 90% with its default exploration sqrt(1/2), not with the textbook sqrt(2) (~88-92%).
    chosen = play(make_selector(name, 4, seed=seed), lambda t: STOCHASTIC_MEANS, 2000, env_seed=seed)
    assert chosen.count(3) / len(chosen) >= 0.9


def test_epsilon_greedy_pulls_best_arm_most() -> None:
    chosen = play(make_selector("epsilon_greedy", 4), lambda t: STOCHASTIC_MEANS, 2000, env_seed=0)
    counts = [chosen.count(a) for a in range(4)]
    assert max(range(4), key=counts.__getitem__) == 3


STOCHASTIC_POLICIES = ["ucb1", "thompson", "epsilon_greedy", "discounted_ucb", "sliding_window_ucb"]


@pytest.mark.parametrize("name", STOCHASTIC_POLICIES)
def test_learns_from_fractional_rewards(name: str) -> None:
    # Thompson turns these into Bernoulli observations; the others average them directly.
    chosen = play(make_selector(name, 3), lambda t: [0.3, 0.45, 0.6], 1000, env_seed=0, fractional=True)
    assert chosen.count(2) / len(chosen) > 0.6  # a policy that learned nothing plays it ~1/3 of the time


def post_switch_share(name: str, seed: int) -> float:
    """Arm 0 is best for 2,000 rounds, then arm 3 (old best drops to 0.6, new best rises to 0.8): the share
    of the last 1,000 rounds spent on arm 3. The long first phase is what makes plain UCB1 slow to notice:
    its mean of arm 0 stays above 0.8 for ~2,000 more pulls (with a switch at round 1,000 of 3,000 UCB1 had
    fully recovered by the last 1,000 rounds, so that setting could not tell the policies apart)."""
    chosen = play(make_selector(name, 4, seed=seed),
                           lambda t: [0.9, 0.5, 0.4, 0.3] if t < 2000 else [0.6, 0.5, 0.4, 0.8], 3000, seed)
    return chosen[2000:].count(3) / 1000


def test_non_stationary_variants_track_the_switch() -> None:
    seeds = range(4)
    shares = {name: [post_switch_share(name, s) for s in seeds]
              for name in ("discounted_ucb", "sliding_window_ucb", "ucb1")}
    for name in ("discounted_ucb", "sliding_window_ucb"):
        assert min(shares[name]) > 0.5, (name, shares[name])
        assert sum(shares[name]) / len(seeds) > sum(shares["ucb1"]) / len(seeds) + 0.15, shares


def ftl_trap(t: int, rounds: int) -> list[float]:
    """Arms 0 and 1 alternate reward 1 after a half-reward start, so the cumulative leader is always the
    arm about to lose: follow-the-leader earns ~0 while either arm earns ~T/2. Arms 2, 3 pay 0.25."""
    if t == 0:
        return [0.5, 0.0, 0.25, 0.25]
    return [0.0, 1.0, 0.25, 0.25] if t % 2 else [1.0, 0.0, 0.25, 0.25]


def leader_change(t: int, rounds: int) -> list[float]:
    """Arm 0 pays for the first third, arm 1 (the best in hindsight) afterwards. Catching up needs the
    importance weighting of EXP3: arm 1 is then played with probability ~exploration / K only."""
    return [1.0, 0.0, 0.25, 0.25] if t < rounds // 3 else [0.0, 1.0, 0.25, 0.25]


def expected_regret(selector: Selector, sequence, rounds: int) -> float:
    """Best fixed arm's total minus the policy's expected reward sum_t <p_t, r_t> on an oblivious sequence."""
    totals = [0.0] * 4
    earned = 0.0
    for t in range(rounds):
        rewards = sequence(t, rounds)
        probs = selector.state()["probabilities"]
        earned += sum(p * r for p, r in zip(probs, rewards, strict=True))
        feed(selector, selector.select(), rewards)
        totals = [a + r for a, r in zip(totals, rewards, strict=True)]
    return max(totals) - earned


def hedge_regret(sequence, rounds: int) -> float:
    return expected_regret(HedgeSelector(4), sequence, rounds)


def exp3_regret(sequence, rounds: int) -> float:
    runs = [expected_regret(EXP3Selector(4, seed=s, horizon=rounds), sequence, rounds) for s in range(4)]
    return sum(runs) / len(runs)


BOUNDS = {  # the theorems' regret bounds after T rounds, K = 4 arms (Hedge: CBL Thm 2.3; EXP3: Auer Cor 3.2)
    "hedge": (hedge_regret, lambda t: math.sqrt(2 * t * math.log(4)) + math.sqrt(math.log(4) / 8)),
    "exp3": (exp3_regret, lambda t: 2 * math.sqrt(math.e - 1) * math.sqrt(t * 4 * math.log(4))),
}


@pytest.mark.parametrize("sequence", [ftl_trap, leader_change])
@pytest.mark.parametrize("name", BOUNDS)
def test_adversarial_regret_is_sublinear(name: str, sequence) -> None:
    regret, bound = BOUNDS[name]
    short, long = regret(sequence, 1000), regret(sequence, 8000)
    assert short > 0 and long > 0  # the sequence does cost something, so the ratio below is meaningful
    assert short <= bound(1000) and long <= bound(8000), (short, long)
    assert (short / 1000) / (long / 8000) >= 2.0, (short, long)  # sqrt(8) ~ 2.8 for sqrt(T) regret


def test_ftl_trap_is_adversarial() -> None:
    # Hedge with a huge learning rate is follow-the-leader: linear regret, so the sequence is a real test.
    assert expected_regret(HedgeSelector(4, learning_rate=50.0), ftl_trap, 1000) / 1000 > 0.4


@pytest.mark.parametrize("name", SELECTORS)
def test_reset_replays_like_new(name: str) -> None:
    selector = make_selector(name, 3, seed=7)
    fresh = play(selector, lambda t: [0.3, 0.5, 0.7], 100, env_seed=1)
    state = selector.state()
    assert sum(state["pulls"]) == 100
    observed = [m for m in state["mean_reward"] if m is not None]
    assert observed and all(0 <= m <= 1 for m in observed)
    selector.reset()
    assert selector.state()["pulls"] == [0, 0, 0]
    assert play(selector, lambda t: [0.3, 0.5, 0.7], 100, env_seed=1) == fresh


@pytest.mark.parametrize("name", SELECTORS)
@pytest.mark.parametrize("reward", [-0.1, 1.5, math.nan, math.inf])
def test_rejects_reward_outside_unit_interval(name: str, reward: float) -> None:
    selector = make_selector(name, 2)
    with pytest.raises(ValueError, match="reward"):
        feed(selector, selector.select(), [reward, reward])


@pytest.mark.parametrize("name", [n for n, cls in SELECTORS.items() if not cls.full_information])
@pytest.mark.parametrize("arm", [-1, 2, 1.0, True])
def test_rejects_bad_arm(name: str, arm) -> None:
    with pytest.raises(ValueError, match=r"arm.*\[0, 1\]"):
        make_selector(name, 2).update(arm, 0.5)


@pytest.mark.parametrize("name", SELECTORS)
@pytest.mark.parametrize("n_arms", [0, -3, 2.0])
def test_rejects_bad_n_arms(name: str, n_arms) -> None:
    with pytest.raises(ValueError, match="n_arms"):
        make_selector(name, n_arms)


@pytest.mark.parametrize(("name", "params"), [
    ("ucb1", {"exploration": -1.0}), ("epsilon_greedy", {"epsilon": 1.5}), ("exp3", {"exploration": 0.0}),
    ("exp3", {"horizon": 0}), ("discounted_ucb", {"discount": 1.0}), ("sliding_window_ucb", {"window": 0}),
    ("hedge", {"learning_rate": 0.0}), ("fixed", {"arm": 4}),
])
def test_rejects_bad_parameters(name: str, params: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(params))):
        make_selector(name, 4, **params)


def test_make_selector_rejects_unknown_name_and_parameter() -> None:
    with pytest.raises(ValueError, match="ucb1.*thompson.*fixed"):
        make_selector("ucb2", 4)
    with pytest.raises(ValueError, match="epsilon"):
        make_selector("ucb1", 4, epsilon=0.1)


@pytest.mark.parametrize("name", [n for n, cls in SELECTORS.items() if not cls.full_information])
def test_update_all_is_only_for_full_information(name: str) -> None:
    with pytest.raises(TypeError, match="update\\(arm, reward\\)"):
        make_selector(name, 2).update_all([0.5, 0.5])


def test_hedge_needs_every_reward() -> None:
    hedge = make_selector("hedge", 2)
    with pytest.raises(TypeError, match="update_all"):
        hedge.update(0, 0.5)
    with pytest.raises(ValueError, match="one per arm"):
        hedge.update_all([0.5])


def test_fixed_always_plays_its_arm() -> None:
    assert set(play(make_selector("fixed", 4, arm=2), lambda t: STOCHASTIC_MEANS, 50, 0)) == {2}
