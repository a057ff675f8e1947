"""Epsilon-greedy: exploit the best empirical mean, explore uniformly with probability epsilon."""

from __future__ import annotations

from flashspec.bandit.base import Selector, check_range


class EpsilonGreedySelector(Selector):
    """Each arm is tried once first (a mean needs a sample); then with probability `epsilon` a uniform
    arm, else the arm with the best mean reward (ties to the lowest index)."""

    def __init__(self, n_arms: int, seed: int = 0, epsilon: float = 0.1) -> None:
        self.epsilon = check_range("epsilon", epsilon, 0.0, 1.0)
        super().__init__(n_arms, seed)

    def select(self) -> int:
        untried = [i for i in range(self.n_arms) if self._observed[i] == 0]
        if untried:
            return untried[0]
        if self.rng.random() < self.epsilon:
            return self.rng.randrange(self.n_arms)
        return max(range(self.n_arms), key=lambda i: self._reward_sums[i] / self._observed[i])
