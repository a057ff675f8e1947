"""EXP3Spec (Hou et al., "BanditSpec", ICML 2025): exponential weights over the configurations for rewards
chosen by an adversary, with the loss estimates of EXP3 and a learning rate set by the number of rounds. A
request's number of steps is a stopping time bounded by its token budget (every step emits at least one
token), so `horizon` is max_new_tokens (conf/bandit/exp3spec.yaml). docs/bandit.md says what of the paper
this follows, and the gaps."""

from __future__ import annotations

import math

from flashspec.bandit.base import Selector, check_count, softmax


class EXP3SpecSelector(Selector):
    """p_i proportional to exp(-eta * L_i), L_i the importance-weighted loss sum of arm i (loss = 1 - reward,
    estimate loss / p_arm for the played arm); eta = sqrt(2 ln K / (K * horizon)), for which EXP3's expected
    regret over `horizon` rounds is at most sqrt(2 K horizon ln K) (Lattimore & Szepesvari, Thm. 11.2)."""

    def __init__(self, n_arms: int, seed: int = 0, horizon: int = 128) -> None:
        self.horizon = check_count("horizon", horizon, "bound on the steps of a request (max_new_tokens)")
        super().__init__(n_arms, seed)
        self.learning_rate = math.sqrt(2 * math.log(max(self.n_arms, 2)) / (self.n_arms * self.horizon))

    def reset(self) -> None:
        super().reset()
        self._losses = [0.0] * self.n_arms

    def probabilities(self) -> list[float]:
        return softmax([-self.learning_rate * loss for loss in self._losses])

    def select(self) -> int:
        return self.rng.choices(range(self.n_arms), weights=self.probabilities())[0]

    def _learn(self, arm: int, reward: float) -> None:
        self._losses[arm] += (1.0 - reward) / self.probabilities()[arm]

    def _decay(self, keep: float) -> None:
        self._losses = [loss * keep for loss in self._losses]

    def state(self) -> dict:
        return {**super().state(), "probabilities": self.probabilities()}
