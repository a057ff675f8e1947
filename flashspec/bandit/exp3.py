"""EXP3 (Auer, Cesa-Bianchi, Freund & Schapire 2002): exponential weights with importance-weighted
rewards, for adversarial (non-stochastic) bandits."""

from __future__ import annotations

import math

from flashspec.bandit.base import Selector, check_count, check_range, softmax


def tuned_exploration(n_arms: int, horizon: int) -> float:
    """Auer et al. 2002, Cor. 3.2: this rate bounds the expected regret over `horizon` rounds by
    2 sqrt(e - 1) sqrt(horizon * K ln K)."""
    return min(1.0, math.sqrt(n_arms * math.log(n_arms) / ((math.e - 1) * horizon)))


class EXP3Selector(Selector):
    """p_i = (1 - exploration) w_i / sum(w) + exploration / K; the played arm's weight is multiplied by
    exp(exploration * reward / (p_arm * K)).

    `exploration` is the uniform-mixing rate (called gamma in the paper; not the draft length).
    Left as None it is tuned for `horizon` rounds (the number of updates between resets).
    """

    def __init__(self, n_arms: int, seed: int = 0, exploration: float | None = None,
                 horizon: int = 1000) -> None:
        super().__init__(n_arms, seed)
        self.horizon = check_count("horizon", horizon, "expected number of rounds")
        if exploration is None:
            self.exploration = tuned_exploration(self.n_arms, horizon)
        else:
            self.exploration = check_range("exploration", exploration, 0.0, 1.0, low_open=True)

    def reset(self) -> None:
        super().reset()
        self._log_weights = [0.0] * self.n_arms

    def probabilities(self) -> list[float]:
        uniform = self.exploration / self.n_arms
        return [(1 - self.exploration) * p + uniform for p in softmax(self._log_weights)]

    def select(self) -> int:
        return self.rng.choices(range(self.n_arms), weights=self.probabilities())[0]

    def _decay(self, keep: float) -> None:
        self._log_weights = [w * keep for w in self._log_weights]

    def _learn(self, arm: int, reward: float) -> None:
        estimate = reward / self.probabilities()[arm]  # unbiased estimate of the arm's reward
        self._log_weights[arm] += self.exploration * estimate / self.n_arms

    def state(self) -> dict:
        return {**super().state(), "probabilities": self.probabilities()}
