"""The Selector contract: pick an arm each step, learn from the reward it earned."""

from __future__ import annotations

import math
import numbers
import random
from abc import ABC, abstractmethod
from collections.abc import Sequence


def check_range(name: str, value: float, low: float, high: float = math.inf, *,
                low_open: bool = False, high_open: bool = False) -> float:
    """Return `value` as a float if it lies in the interval, else raise a ValueError naming the interval."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (low < value if low_open else low <= value) and (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open or high == math.inf else ']'}"
        raise ValueError(f"{name}={value!r}: use a number in {interval}")
    return float(value)


def check_count(name: str, value: int, meaning: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name}={value!r}: use an integer {meaning} >= 1")
    return int(value)


class Selector(ABC):
    """An online arm-selection policy. Rewards lie in [0, 1]; higher is better.

    Subclasses validate their own hyper-parameters (keyword arguments after `seed`), keep their random
    state in `self.rng` (seeded, never the global RNG) and extend `reset` for their own statistics.
    """

    full_information: bool = False  # True: the engine reports every arm's reward through `update_all`

    def __init__(self, n_arms: int, seed: int = 0) -> None:
        self.n_arms = check_count("n_arms", n_arms, "number of arms")
        self.seed = seed
        self.reset()

    @abstractmethod
    def select(self) -> int:
        """The arm to play this step."""

    def update(self, arm: int, reward: float) -> None:
        """Bandit feedback: the reward of the arm that was played."""
        arm, reward = self.check_arm(arm), check_reward(reward)
        self.pulls[arm] += 1
        self._record(arm, reward)
        self._learn(arm, reward)

    def update_all(self, rewards: Sequence[float]) -> None:
        """Full-information feedback: every arm's reward this step (only for `full_information` policies)."""
        raise TypeError(f"{type(self).__name__} learns from bandit feedback: call update(arm, reward) with "
                        "the played arm's reward; update_all is for full-information policies (e.g. 'hedge')")

    def reset(self) -> None:
        """Forget everything and re-seed: afterwards the selector behaves exactly like a new one."""
        self.rng = random.Random(self.seed)
        self.pulls = [0] * self.n_arms
        self._observed = [0] * self.n_arms
        self._reward_sums = [0.0] * self.n_arms

    def begin_request(self, scope: str, decay: float) -> None:
        """What a new request keeps (bandit.scope): nothing (request), everything (run), or a fraction (carry)."""
        if scope == "request":
            self.reset()
        elif scope == "carry":
            self.carry_over(decay)

    def carry_over(self, keep: float) -> None:
        """Between requests (bandit.scope=carry): keep a fraction `keep` of the evidence, so what one request
        taught the next is trusted less, and an arm that stopped paying regains its exploration."""
        check_range("bandit.decay", keep, 0.0, 1.0)
        self._observed = [n * keep for n in self._observed]
        self._reward_sums = [s * keep for s in self._reward_sums]
        self._decay(keep)

    def _decay(self, keep: float) -> None:  # noqa: B027 (an optional hook, not abstract)
        """Scale the policy's own statistics by `keep`; a policy without any (fixed) needs nothing."""

    def state(self) -> dict:
        """For logging: pulls per arm and mean observed reward per arm (None for an arm never observed)."""
        means = [s / n if n else None for s, n in zip(self._reward_sums, self._observed, strict=True)]
        return {"pulls": list(self.pulls), "mean_reward": means}

    def check_arm(self, arm: int) -> int:
        if isinstance(arm, bool) or not isinstance(arm, numbers.Integral) or not 0 <= arm < self.n_arms:
            raise ValueError(f"arm={arm!r}: use an integer arm index in [0, {self.n_arms - 1}]")
        return int(arm)

    def _record(self, arm: int, reward: float) -> None:
        self._observed[arm] += 1
        self._reward_sums[arm] += reward

    def _learn(self, arm: int, reward: float) -> None:  # noqa: B027 (an optional hook, not abstract)
        """Policy-specific learning from a validated reward; the default learns nothing."""


def check_reward(reward: float) -> float:
    if isinstance(reward, bool) or not isinstance(reward, numbers.Real) or not 0 <= reward <= 1:
        raise ValueError(f"reward={reward!r}: rewards must be finite numbers in [0, 1]; normalise them first")
    return float(reward)


def softmax(scores: Sequence[float]) -> list[float]:
    top = max(scores)  # shift so the largest exponent is 0: log-weights grow without bound
    weights = [math.exp(s - top) for s in scores]
    total = sum(weights)
    return [w / total for w in weights]
