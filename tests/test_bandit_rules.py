"""UCB1's index by hand, its untried-first and tie rules, and a close two-arm instance over many seeds."""

import math
import random

from flashspec.bandit import UCB1Selector
from flashspec.bandit.ucb1 import DEFAULT_EXPLORATION


def fed(rewards: dict[int, list[float]], n_arms: int = 2, **params) -> UCB1Selector:
    selector = UCB1Selector(n_arms, **params)
    for arm, values in rewards.items():
        for r in values:
            selector.update(arm, r)
    return selector


def test_ucb1_indices_by_hand():
    selector = fed({0: [1.0, 0.0], 1: [0.8]})
    c, log_n = DEFAULT_EXPLORATION, math.log(3)
    assert math.isclose(selector._index(0, log_n), 0.5 + c * math.sqrt(log_n / 2))
    assert math.isclose(selector._index(1, log_n), 0.8 + c * math.sqrt(log_n / 1))
    custom = fed({0: [0.25] * 4, 1: [0.5]}, exploration=2.0)
    assert math.isclose(custom._index(0, math.log(5)), 0.25 + 2.0 * math.sqrt(math.log(5) / 4))


def test_ucb1_exploration_shrinks_as_sqrt_log_n_over_n():
    """Arm 0: 10 pulls, mean 0.6 (index 0.95); arm 1: 2 pulls, mean 0.3 (index 1.09): the rarely played arm
    wins. A bonus decaying as 1/n (0.07 vs 0.35) would pick arm 0."""
    selector = fed({0: [1.0] * 6 + [0.0] * 4, 1: [0.3, 0.3]})
    assert selector.select() == 1
    selector = fed({0: [1.0] * 6 + [0.0] * 4, 1: [0.2, 0.2]})  # 0.2 + 0.79 = 0.99 > 0.95
    assert selector.select() == 1
    selector = fed({0: [1.0] * 6 + [0.0] * 4, 1: [0.1, 0.1]})  # 0.1 + 0.79 = 0.89 < 0.95
    assert selector.select() == 0


def test_ucb1_plays_untried_arms_first_lowest_index_on_ties():
    selector = fed({1: [1.0]}, n_arms=3)
    assert selector.select() == 0  # arms 0 and 2 untried: the lower index
    selector.update(0, 0.0)
    assert selector.select() == 2  # untried beats arm 1's perfect mean
    selector.update(2, 1.0)
    assert selector.select() == 1  # arms 1 and 2 tie (mean 1, one pull each): the lower index
    assert fed({}, n_arms=4).select() == 0


def test_ucb1_finds_the_better_of_two_close_arms():
    """Bernoulli arms 0.45 and 0.55: within 2000 steps UCB1 plays the better one most on nearly every seed
    (a bonus decaying as 1/n locked onto the worse arm on about one seed in seven)."""
    locked = 0
    for seed in range(100):
        selector, env = UCB1Selector(2, seed), random.Random(seed)
        means = (0.45, 0.55) if seed % 2 else (0.55, 0.45)  # the better arm on either side
        best = means.index(0.55)
        for _ in range(2000):
            arm = selector.select()
            selector.update(arm, float(env.random() < means[arm]))
        locked += selector.pulls[best] < 1000
    assert locked <= 3, locked
