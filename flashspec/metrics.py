"""What one generation reports."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ArmStats:
    pulls: int = 0
    drafted: int = 0
    accepted: int = 0


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]  # new tokens only
    prompt_tokens: int
    steps: int  # target forward passes, the prefill included
    arms: dict[str, ArmStats]
    trace: list[int]  # the bandit arm of each decoding step
    wall_time_s: float
    ttft_s: float
    emitted: list[int] = field(default_factory=list)  # tokens emitted at each decoding step

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
        drafted = sum(a.drafted for a in self.arms.values())
        return sum(a.accepted for a in self.arms.values()) / drafted if drafted else float("nan")

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.wall_time_s if self.wall_time_s > 0 else float("nan")
