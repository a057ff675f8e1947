"""Thompson sampling with a Beta-Bernoulli model (Agrawal & Goyal 2012)."""

from __future__ import annotations

from flashspec.bandit.base import Selector


class ThompsonSelector(Selector):
    """Beta(1, 1) prior per arm; play the arm with the largest posterior sample.

    A fractional reward r is turned into a Bernoulli(r) observation (the Bernoulli trick), which keeps the
    conjugate update exact and the regret guarantees of the Bernoulli case for any reward in [0, 1].
    """

    def reset(self) -> None:
        super().reset()
        self._successes = [0] * self.n_arms
        self._failures = [0] * self.n_arms

    def select(self) -> int:
        posteriors = zip(self._successes, self._failures, strict=True)
        samples = [self.rng.betavariate(1 + s, 1 + f) for s, f in posteriors]
        return max(range(self.n_arms), key=samples.__getitem__)

    def _decay(self, keep: float) -> None:  # fractional pseudo-counts: the Beta posterior takes them as they are
        self._successes = [s * keep for s in self._successes]
        self._failures = [f * keep for f in self._failures]

    def _learn(self, arm: int, reward: float) -> None:
        if self.rng.random() < reward:
            self._successes[arm] += 1
        else:
            self._failures[arm] += 1
