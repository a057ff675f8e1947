"""Typed configuration. YAML (conf/) only composes these; every field is read somewhere."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass
class SamplingConfig:
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    seed: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"sampling.temperature={self.temperature}: use 0 for greedy or a positive number")
        if self.top_k < 0:
            raise ValueError(f"sampling.top_k={self.top_k}: use 0 (off) or a positive count")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"sampling.top_p={self.top_p}: use a value in (0, 1]; 1 turns it off")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class TargetConfig:
    model: str = "tiny"  # "tiny" (built-in, no download), a local path or a hub id
    gguf_file: str | None = None  # a GGUF file (a path, or a name inside the folder `model`), dequantized
    dtype: str = "float32"
    device: str = "cpu"
    attn_implementation: str = "sdpa"
    backend: str = "auto"  # "auto": native Llama path when the architecture allows, else "hf"
    max_context: int = 2048  # KV cache length allocated per request
    device_map: str | None = None  # "auto" spreads a target too large for one GPU over several
    # Native path: decoding steps replay captured CUDA graphs of a compiled layer. None = on for CUDA devices;
    # True on the CPU runs the same static-shape step uncaptured (what tests check it with).
    cuda_graphs: bool | None = None


@dataclass
class ArmConfig:
    # prompt_lookup | draft_model | medusa | eagle | eagle3 | streaming | layer_skip | controlled
    kind: str = "prompt_lookup"
    model: str = ""  # draft model ("tiny-draft", a path or a hub id) or a drafter checkpoint
    ngram_max: int = 3  # prompt lookup: longest suffix n-gram to match
    ngram_min: int = 1
    params: dict[str, Any] = field(default_factory=dict)  # arm-specific options, documented per arm


@dataclass
class BanditConfig:
    policy: str = "ucb1"  # ucb1 | thompson | epsilon_greedy | exp3 | discounted_ucb | sliding_window_ucb | hedge
    #                       | elimination_ucb | ucbspec | exp3spec | fixed | none (plain autoregressive)
    # "tokens_per_second": the step's wall-clock rate; "accepted_tokens": tokens per step; "cost_model": tokens
    # over the cost model's seconds for the arm and block (flashspec/bandit/cost.py): deterministic
    reward: str = "tokens_per_second"
    # "request": fresh state per prompt; "run": carried across a run; "carry": carried, a fraction `decay` of
    # the evidence kept at each new request
    scope: str = "request"
    decay: float = 0.5  # scope=carry: the fraction of the evidence a request hands the next
    # reward=cost_model: a cost table (costs.json): read if it exists, else measured at the first request and
    # written there; None: measured at the first request, kept in memory (and in the log)
    costs: str | None = None
    arm: int = 0  # the arm `fixed` always picks
    params: dict[str, Any] = field(default_factory=dict)  # policy hyper-parameters

    def __post_init__(self) -> None:
        if self.reward not in REWARDS:
            raise ValueError(f"bandit.reward={self.reward!r}: use one of {', '.join(REWARDS)}")
        if self.scope not in SCOPES:
            raise ValueError(f"bandit.scope={self.scope!r}: use one of {', '.join(SCOPES)}")
        if not 0 <= self.decay <= 1:
            raise ValueError(f"bandit.decay={self.decay}: use a fraction in [0, 1] (1 keeps everything, as scope=run)")


REWARDS = ("tokens_per_second", "accepted_tokens", "cost_model")
SCOPES = ("request", "run", "carry")


@dataclass
class FlashSpecConfig:
    target: TargetConfig = field(default_factory=TargetConfig)
    arms: list[ArmConfig] = field(default_factory=lambda: [ArmConfig(kind="prompt_lookup")])
    gammas: list[int] = field(default_factory=lambda: [4])
    bandit: BanditConfig = field(default_factory=BanditConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    verifier: str = "auto"  # "auto" (Triton on CUDA, else reference) | "reference" | "triton"

    def __post_init__(self) -> None:
        bad = [g for g in self.gammas if int(g) < 1]
        if not self.gammas or bad:
            raise ValueError(f"gammas={self.gammas}: every gamma (draft length) must be an integer >= 1")
        if self.bandit.policy != "none" and not self.arms:
            raise ValueError("no draft arms configured: add one to `arms` or use bandit.policy='none'")
