"""UCB with elimination: an arm whose optimistic reward lies below another arm's pessimistic reward is dropped
for good (until `carry_over` widens the intervals again), so a dominated drafter costs a few steps, not the
slowly growing share that UCB1's log n bonus keeps giving it (Even-Dar, Mannor & Mansour 2006's successive
elimination, played with UCB's index among the survivors)."""

from __future__ import annotations

import math

from flashspec.bandit.ucb1 import UCB1Selector


class EliminationUCBSelector(UCB1Selector):
    """index_i = mean_i + exploration * sqrt(ln n / n_i) among the live arms; arm i is dropped once
    mean_i + radius_i < max_j (mean_j - radius_j), with the same radius. Untried arms are never dropped."""

    def reset(self) -> None:
        super().reset()
        self.dropped: set[int] = set()

    def select(self) -> int:
        log_n = math.log(max(sum(self._counts), 1.0))
        self._drop_dominated(log_n)
        live = [i for i in range(self.n_arms) if i not in self.dropped]
        return max(live, key=lambda i: self._index(i, log_n))

    def _drop_dominated(self, log_n: float) -> None:
        tried = [i for i in range(self.n_arms) if self._counts[i] > 0 and i not in self.dropped]
        if len(tried) < 2:
            return
        best_lower = max(2 * self._sums[i] / self._counts[i] - self._index(i, log_n) for i in tried)
        self.dropped |= {i for i in tried if self._index(i, log_n) < best_lower}

    def _decay(self, keep: float) -> None:
        super()._decay(keep)
        self.dropped = set()  # less evidence: every arm is judged again on what was kept

    def state(self) -> dict:
        return {**super().state(), "dropped": sorted(self.dropped)}
