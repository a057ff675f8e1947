"""The cost model: measured seconds to draft with each (arm, gamma) pair and to verify a block of n tokens, so
a step's reward is its expected tokens per second, emitted / (draft + verify), a function of what the step
committed and not of the wall clock. Same prompt, same tokens, same rewards: the arm choices of a
deterministic policy repeat run to run. `calibrate_costs` measures the table with an engine's target and arms."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from flashspec.engine import SpeculativeEngine
    from flashspec.models import CausalLM

# The cost model's calibration: a prompt of this many tokens, each timing the median of this many repeats.
CALIBRATION_TOKENS, CALIBRATION_REPEATS = 64, 5


@dataclass
class CostModel:
    arms: list[str]  # the engine's pair names, in its order: what `draft_s` is indexed by
    draft_s: list[float]  # per pair: median seconds of one draft
    verify_s: dict[int, float]  # block length (pending token + drafts) -> median seconds of one target forward

    def __post_init__(self) -> None:
        self.verify_s = {int(n): float(s) for n, s in self.verify_s.items()}
        if len(self.arms) != len(self.draft_s) or not self.verify_s:
            raise ValueError("a cost model needs one draft time per arm and at least one verify time")
        if min(self.draft_s) < 0 or min(self.verify_s.values()) <= 0:
            raise ValueError("cost model times must be positive (draft times may be 0)")

    def verify(self, block: int) -> float:
        """Seconds of a target forward over `block` tokens: measured points joined by lines, the end segments
        extended (a tree draft may be longer than any measured block)."""
        sizes = sorted(self.verify_s)
        if len(sizes) == 1:
            return self.verify_s[sizes[0]]
        lo, hi = (sizes[0], sizes[1]) if block <= sizes[0] else (sizes[-2], sizes[-1])
        for a, b in zip(sizes, sizes[1:], strict=False):
            if a <= block <= b:
                lo, hi = a, b
                break
        slope = (self.verify_s[hi] - self.verify_s[lo]) / (hi - lo)
        return max(self.verify_s[lo] + slope * (block - lo), min(self.verify_s.values()))

    def step_seconds(self, k: int, drafted: int) -> float:
        """Pair k drafted `drafted` tokens: its drafting time plus a forward over 1 + drafted tokens."""
        return self.draft_s[k] + self.verify(1 + drafted)

    def best_rate(self, gammas: list[int]) -> float:
        """Tokens/s of the best conceivable step: every pair with its whole draft accepted (the normaliser
        that maps rates into [0, 1])."""
        return max((g + 1) / self.step_seconds(k, g) for k, g in enumerate(gammas))

    def reward(self, k: int, emitted: int, drafted: int, gammas: list[int]) -> float:
        """bandit.reward=cost_model: the step's tokens per cost-model second, over the best conceivable rate."""
        return min(1.0, emitted / self.step_seconds(k, drafted) / self.best_rate(gammas))

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path, arms: list[str] | None = None) -> CostModel:
        """A table written by `save` (e.g. by an earlier run's calibration); its arms must be `arms` if given
        (the engine's)."""
        try:
            model = cls(**json.loads(Path(path).read_text()))
        except (OSError, ValueError, TypeError) as err:
            raise ValueError(f"bandit.costs={path}: not a readable cost table ({err}); give the path of a "
                             "costs.json written by a calibration, or null to measure one") from err
        if arms is not None and model.arms != arms:
            raise ValueError(f"bandit.costs={path}: its arms {model.arms} are not this engine's {arms}: "
                             "calibrate for these arms and gammas, or give bandit.costs=null")
        return model


def calibrate_costs(engine: SpeculativeEngine, repeats: int = CALIBRATION_REPEATS) -> CostModel:
    """Measure the cost model: the median seconds of each pair's draft, and of a target forward over every
    block length a step can send, on one fixed prompt (its text repeats, so prompt lookup finds drafts).
    Uses the engine's target and arms as a request would, and leaves them reset."""
    cfg, target = engine.config, engine.target
    text = "def add(a, b):\n    return a + b\n\nThe answer is the sum of the two numbers. " * 16
    context = torch.as_tensor(engine.tokenizer(text)["input_ids"], dtype=torch.long).flatten()[:CALIBRATION_TOKENS]
    generator = torch.Generator(engine.device).manual_seed(cfg.sampling.seed)
    prompt = context[:-1]  # as in a request: the cache holds all but the last (pending) token
    target.reset()
    for arm, _ in engine.pairs:
        arm.begin(prompt)
    engine._observe_target(0, target.forward(prompt.to(engine.device)))
    drafts, lengths = [], {1 + g for g in cfg.gammas} | {1}
    for arm, gamma in engine.pairs:
        draft = arm.propose(context, gamma, cfg.sampling, generator)
        lengths.add(1 + len(draft))
        drafts.append(median_seconds(
            lambda a=arm, g=gamma: a.propose(context, g, cfg.sampling, generator), repeats, engine.device))
    cached, verify = target.length, {}
    for n in sorted(lengths):
        block = context[-n:].to(engine.device) if n <= len(context) else context[-1:].repeat(n).to(engine.device)
        verify[n] = median_seconds(lambda b=block: forward_and_crop(target, b, cached), repeats, engine.device)
    target.reset()
    return CostModel(list(engine.arm_names), drafts, verify)


def forward_and_crop(target: CausalLM, block: Tensor, cached: int) -> None:
    target.forward(block)
    target.crop(cached)


def median_seconds(work: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Median wall time of `work` over `repeats` calls, after one untimed call (allocation, compilation)."""
    work()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        work()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
