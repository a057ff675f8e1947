"""Always the same arm: the baseline that isolates one draft arm."""

from __future__ import annotations

from flashspec.bandit.base import Selector


class FixedSelector(Selector):
    def __init__(self, n_arms: int, seed: int = 0, arm: int = 0) -> None:
        super().__init__(n_arms, seed)
        self.arm = self.check_arm(arm)

    def select(self) -> int:
        return self.arm
