"""Sliding-window UCB (Garivier & Moulines 2011): UCB over the last `window` plays only."""

from __future__ import annotations

from collections import deque

from flashspec.bandit.base import check_count
from flashspec.bandit.ucb1 import DEFAULT_EXPLORATION, UCB1Selector


class SlidingWindowUCBSelector(UCB1Selector):
    """Counts and sums cover the last `window` plays, so the log term uses min(t, window) as the paper's."""

    def __init__(self, n_arms: int, seed: int = 0, window: int = 200,
                 exploration: float = DEFAULT_EXPLORATION) -> None:
        self.window = check_count("window", window, "number of plays")
        super().__init__(n_arms, seed, exploration)

    def reset(self) -> None:
        super().reset()
        self._history: deque[tuple[int, float]] = deque()

    def _decay(self, keep: float) -> None:
        raise ValueError("sliding_window_ucb forgets through its window, not a decay: use bandit.scope=run "
                         "(or request)")

    def _learn(self, arm: int, reward: float) -> None:
        super()._learn(arm, reward)
        self._history.append((arm, reward))
        if len(self._history) > self.window:
            old_arm, old_reward = self._history.popleft()
            self._counts[old_arm] -= 1
            self._sums[old_arm] -= old_reward
