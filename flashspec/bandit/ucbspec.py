"""UCBSpec (Hou et al., "BanditSpec: Adaptive Speculative Decoding via Bandit Algorithms", ICML 2025): UCB
over the speculative configurations, learning from the tokens each step emits (conf/bandit/ucbspec.yaml sets
that reward, bandit.reward=accepted_tokens). docs/bandit.md says what of the paper this follows, and the gaps."""

from __future__ import annotations

import math

from flashspec.bandit.ucb1 import UCB1Selector

# The radius of Auer et al.'s UCB1, sqrt(2 ln t / n) for rewards in [0, 1], which the paper builds on; this
# package's UCB1 uses sqrt(ln t / (2 n)) (flashspec/bandit/ucb1.py says why).
PAPER_EXPLORATION = math.sqrt(2.0)


class UCBSpecSelector(UCB1Selector):
    """index_i = mean emitted fraction_i + exploration * sqrt(ln t / n_i); each configuration once first."""

    def __init__(self, n_arms: int, seed: int = 0, exploration: float = PAPER_EXPLORATION) -> None:
        super().__init__(n_arms, seed, exploration)
