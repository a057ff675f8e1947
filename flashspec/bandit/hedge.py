"""Hedge / exponential weights (Freund & Schapire 1997) for full-information feedback: every step the
engine reports the reward every arm would have earned, not only the played one."""

from __future__ import annotations

import math
from collections.abc import Sequence

from flashspec.bandit.base import Selector, check_range, check_reward, softmax


class HedgeSelector(Selector):
    """Play arm i with probability proportional to exp(eta * cumulative reward of i).

    learning_rate=None uses the anytime schedule eta_t = sqrt(8 ln K / t), whose regret after T rounds is
    at most sqrt(2 T ln K) + sqrt(ln K / 8) against any reward sequence (Cesa-Bianchi & Lugosi 2006,
    Thm. 2.3); a number fixes eta (sqrt(8 ln K / T) is the best choice for a known horizon T).
    """

    full_information = True

    def __init__(self, n_arms: int, seed: int = 0, learning_rate: float | None = None) -> None:
        super().__init__(n_arms, seed)
        if learning_rate is not None:
            learning_rate = check_range("learning_rate", learning_rate, 0.0, low_open=True)
        self.learning_rate = learning_rate

    def reset(self) -> None:
        super().reset()
        self._cumulative = [0.0] * self.n_arms
        self._round = 1

    def _decay(self, keep: float) -> None:
        self._cumulative = [r * keep for r in self._cumulative]
        self._round = 1 + (self._round - 1) * keep

    def probabilities(self) -> list[float]:
        eta = self.learning_rate
        if eta is None:
            eta = math.sqrt(8 * math.log(self.n_arms) / self._round)
        return softmax([eta * r for r in self._cumulative])

    def select(self) -> int:
        arm = self.rng.choices(range(self.n_arms), weights=self.probabilities())[0]
        self.pulls[arm] += 1  # full information: every arm is observed each round, so count plays here
        return arm

    def update(self, arm: int, reward: float) -> None:
        raise TypeError("HedgeSelector needs every arm's reward each step: call update_all(rewards); for "
                        "bandit feedback (only the played arm's reward) use 'exp3'")

    def update_all(self, rewards: Sequence[float]) -> None:
        if len(rewards) != self.n_arms:
            raise ValueError(f"update_all got {len(rewards)} rewards: pass one per arm ({self.n_arms} arms)")
        rewards = [check_reward(r) for r in rewards]
        for arm, reward in enumerate(rewards):
            self._record(arm, reward)
            self._cumulative[arm] += reward
        self._round += 1

    def state(self) -> dict:
        return {**super().state(), "probabilities": self.probabilities()}
