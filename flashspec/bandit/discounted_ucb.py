"""Discounted UCB (Garivier & Moulines 2011): UCB over exponentially discounted statistics, so the
policy tracks an arm whose reward drifts (non-stationary bandits)."""

from __future__ import annotations

from flashspec.bandit.base import check_range
from flashspec.bandit.ucb1 import DEFAULT_EXPLORATION, UCB1Selector


class DiscountedUCBSelector(UCB1Selector):
    """Every step all counts and sums decay by `discount` (effective memory ~ 1 / (1 - discount) steps),
    and an arm left alone regains its exploration bonus as its discounted count shrinks."""

    def __init__(self, n_arms: int, seed: int = 0, discount: float = 0.99,
                 exploration: float = DEFAULT_EXPLORATION) -> None:
        self.discount = check_range("discount", discount, 0.0, 1.0, low_open=True, high_open=True)
        super().__init__(n_arms, seed, exploration)

    def _learn(self, arm: int, reward: float) -> None:
        self._counts = [c * self.discount for c in self._counts]
        self._sums = [s * self.discount for s in self._sums]
        super()._learn(arm, reward)
