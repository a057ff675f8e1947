"""Arm-selection policies, one per file, all behind the `Selector` contract (see base.py); the rewards the engine
feeds them are reward.py's, the cost model they may read cost.py's."""

from __future__ import annotations

import inspect

from flashspec.bandit.base import Selector
from flashspec.bandit.discounted_ucb import DiscountedUCBSelector
from flashspec.bandit.elimination_ucb import EliminationUCBSelector
from flashspec.bandit.epsilon_greedy import EpsilonGreedySelector
from flashspec.bandit.exp3 import EXP3Selector
from flashspec.bandit.exp3spec import EXP3SpecSelector
from flashspec.bandit.fixed import FixedSelector
from flashspec.bandit.hedge import HedgeSelector
from flashspec.bandit.sliding_window_ucb import SlidingWindowUCBSelector
from flashspec.bandit.thompson import ThompsonSelector
from flashspec.bandit.ucb1 import UCB1Selector
from flashspec.bandit.ucbspec import UCBSpecSelector

SELECTORS: dict[str, type[Selector]] = {
    "ucb1": UCB1Selector,
    "thompson": ThompsonSelector,
    "epsilon_greedy": EpsilonGreedySelector,
    "exp3": EXP3Selector,
    "discounted_ucb": DiscountedUCBSelector,
    "sliding_window_ucb": SlidingWindowUCBSelector,
    "hedge": HedgeSelector,
    "elimination_ucb": EliminationUCBSelector,
    "ucbspec": UCBSpecSelector,
    "exp3spec": EXP3SpecSelector,
    "fixed": FixedSelector,
}


def make_selector(name: str, n_arms: int, seed: int = 0, **params) -> Selector:
    """Build the policy registered as `name`; `params` are its hyper-parameters (keyword arguments)."""
    if name not in SELECTORS:
        raise ValueError(f"unknown selector {name!r}: use one of {', '.join(SELECTORS)}")
    cls = SELECTORS[name]
    valid = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "n_arms", "seed")]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ValueError(f"selector {name!r} has no parameter(s) {', '.join(unknown)}: "
                         f"its parameters are {', '.join(valid) or 'none'}")
    return cls(n_arms, seed, **params)


__all__ = [
    "SELECTORS", "make_selector", "Selector", "UCB1Selector", "ThompsonSelector", "EpsilonGreedySelector",
    "EXP3Selector", "DiscountedUCBSelector", "SlidingWindowUCBSelector", "HedgeSelector", "FixedSelector",
    "EliminationUCBSelector", "UCBSpecSelector", "EXP3SpecSelector",
]
