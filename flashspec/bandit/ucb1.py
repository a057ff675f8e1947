"""UCB1 (Auer, Cesa-Bianchi & Fischer 2002): play the arm with the highest optimistic mean."""

from __future__ import annotations

import math

from flashspec.bandit.base import Selector, check_range

# Rewards in [0, 1] are 1/2-sub-Gaussian, so the confidence radius at level 1/t is sqrt(ln t / (2 n)):
# the coefficient sqrt(1/2) (the asymptotically optimal index of Lattimore & Szepesvari, ch. 8).
# The textbook UCB1 constant sqrt(2) comes from a 1/t^4 level and over-explores by a factor of 2 in radius.
DEFAULT_EXPLORATION = math.sqrt(0.5)


class UCB1Selector(Selector):
    """index_i = mean_i + exploration * sqrt(ln n / n_i); untried arms first, ties to the lowest index.

    `n_i` and `mean_i` come from `_counts` / `_sums`, which the non-stationary variants (discounted,
    sliding-window) maintain differently; `n` is the sum of `_counts`.
    """

    def __init__(self, n_arms: int, seed: int = 0, exploration: float = DEFAULT_EXPLORATION) -> None:
        self.exploration = check_range("exploration", exploration, 0.0)
        super().__init__(n_arms, seed)

    def reset(self) -> None:
        super().reset()
        self._counts = [0.0] * self.n_arms
        self._sums = [0.0] * self.n_arms

    def select(self) -> int:
        log_n = math.log(max(sum(self._counts), 1.0))
        return max(range(self.n_arms), key=lambda i: self._index(i, log_n))

    def _index(self, arm: int, log_n: float) -> float:
        n = self._counts[arm]
        if n <= 0:  # also a discounted count that underflowed: the arm is effectively untried
            return math.inf
        return self._sums[arm] / n + self.exploration * math.sqrt(log_n / n)

    def _decay(self, keep: float) -> None:
        self._counts = [c * keep for c in self._counts]
        self._sums = [s * keep for s in self._sums]

    def _learn(self, arm: int, reward: float) -> None:
        self._counts[arm] += 1
        self._sums[arm] += reward
