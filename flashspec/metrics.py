"""What one generation reports, and what an engine accumulates over its generations (`get_metrics`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields


class ByKey:
    """Results read by key as well as by attribute (`result["text"]`, as the SpecStream package's dicts are):
    the keys are the dataclass fields that hold a value (not None) and the properties."""

    def keys(self) -> list[str]:
        properties = [name for cls in type(self).__mro__ for name, v in vars(cls).items() if isinstance(v, property)]
        return [f.name for f in fields(self) if getattr(self, f.name) is not None] + properties

    def __getitem__(self, key: str):
        if key not in self.keys():
            raise KeyError(f"{key!r}: {type(self).__name__} has the keys {', '.join(self.keys())}")
        return getattr(self, key)


@dataclass
class ArmStats:
    pulls: int = 0
    drafted: int = 0
    accepted: int = 0


@dataclass
class GenerationResult(ByKey):
    text: str
    token_ids: list[int]  # new tokens only
    prompt_tokens: int
    steps: int  # target forward passes, the prefill included
    arms: dict[str, ArmStats]
    trace: list[int]  # the bandit arm of each decoding step
    wall_time_s: float
    ttft_s: float
    emitted: list[int] = field(default_factory=list)  # tokens emitted at each decoding step
    failed_arms: list[str] = field(default_factory=list)  # arms that raised while drafting (they sat out)
    # tokens_per_s over that of the same target's autoregressive decode of the same prompt, when
    # generate(..., measure_speedup=True) ran that second decode; else None
    speedup: float | None = None

    def __getitem__(self, key: str):
        if key == "speedup" and self.speedup is None:
            raise KeyError("speedup was not measured: call generate(..., measure_speedup=True), which decodes the "
                           "prompt a second time, autoregressively, to compare")
        return super().__getitem__(key)

    @property
    def new_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def tau(self) -> float:
        """Mean tokens emitted per target forward."""
        return self.new_tokens / max(self.steps, 1)

    @property
    def alpha(self) -> float:
        """Accepted over drafted tokens, over all arms (nan when nothing was drafted)."""
        return acceptance(self.arms.values())

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.wall_time_s if self.wall_time_s > 0 else float("nan")


def acceptance(stats) -> float:
    """Accepted over drafted tokens of some ArmStats (nan when nothing was drafted)."""
    stats = list(stats)
    drafted = sum(s.drafted for s in stats)
    return sum(s.accepted for s in stats) / drafted if drafted else float("nan")


@dataclass
class EngineMetrics:
    """Totals over an engine's generations (what `engine.get_metrics()` reports)."""

    requests: int = 0
    new_tokens: int = 0
    steps: int = 0
    wall_time_s: float = 0.0
    arms: dict[str, ArmStats] = field(default_factory=dict)
    arm_failures: dict[str, int] = field(default_factory=dict)  # requests in which each arm raised
    speedups: list[float] = field(default_factory=list)  # the measured per-call speedups

    def add(self, result: GenerationResult) -> None:
        self.requests += 1
        self.new_tokens += result.new_tokens
        self.steps += result.steps
        self.wall_time_s += result.wall_time_s
        for name, s in result.arms.items():
            total = self.arms.setdefault(name, ArmStats())
            total.pulls, total.drafted, total.accepted = (total.pulls + s.pulls, total.drafted + s.drafted,
                                                          total.accepted + s.accepted)
        for name in result.failed_arms:
            self.arm_failures[name] = self.arm_failures.get(name, 0) + 1
        if result.speedup is not None:
            self.speedups.append(result.speedup)

    def as_dict(self) -> dict:
        """Totals and rates; `average_speedup` is the mean of the measured per-call speedups (nan if none)."""
        return {
            "requests": self.requests, "new_tokens": self.new_tokens, "target_forwards": self.steps,
            "wall_time_s": self.wall_time_s,
            "tokens_per_second": self.new_tokens / self.wall_time_s if self.wall_time_s > 0 else math.nan,
            "tokens_per_step": self.new_tokens / self.steps if self.steps else math.nan,
            "speculation_accuracy": acceptance(self.arms.values()),
            "average_speedup": sum(self.speedups) / len(self.speedups) if self.speedups else math.nan,
            "arms": {name: {"pulls": s.pulls, "drafted": s.drafted, "accepted": s.accepted,
                            "acceptance": acceptance([s]), "failed_requests": self.arm_failures.get(name, 0)}
                     for name, s in self.arms.items()},
        }
