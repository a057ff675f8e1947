"""`engine.benchmark(test_prompts, num_runs)`: speculative against autoregressive decoding of the same target,
in the same process, on the same prompts, everything measured (the API of the SpecStream package).

Speed: both engines generate every prompt `num_runs` times, alternating, after one untimed warm-up each
(graph capture, compilation and allocator growth happen there); tokens per second are total new tokens
over total generation wall time, and the speedup is their ratio. Memory: the bytes of every tensor the
drafting arms hold that the target does not (their parameters, and the rest: KV caches, feature buffers),
found by walking the objects and counting each storage once; on CUDA also the difference of the peak
allocated memory between speculative and autoregressive generation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from types import ModuleType

import torch
from torch import Tensor, nn

from flashspec.config import SamplingConfig
from flashspec.metrics import ByKey, GenerationResult, acceptance


@dataclass(frozen=True)
class MemoryReport:
    drafter_param_bytes: int  # parameters the arms hold beyond the target's (heads, LoRA, draft models)
    drafter_cache_bytes: int  # other tensors the arms hold: their KV caches, feature buffers
    target_cache_bytes: int  # for scale: the target's non-parameter tensors (its KV cache, small buffers)
    peak_cuda_delta_bytes: int | None  # peak allocated speculating minus autoregressive (None off CUDA)

    @property
    def overhead_bytes(self) -> int:
        return self.drafter_param_bytes + self.drafter_cache_bytes


@dataclass(frozen=True)
class BenchmarkResult(ByKey):
    """Readable by key too (`result["average_speedup"]`), as the SpecStream package's benchmark dict is."""

    average_speedup: float  # tokens_per_second / baseline_tokens_per_second
    tokens_per_second: float  # speculative decoding
    baseline_tokens_per_second: float  # autoregressive decoding of the same target
    speculation_accuracy: float  # accepted / drafted tokens (the acceptance rate; nan if nothing was drafted)
    tokens_per_step: float  # mean tokens per target forward while speculating
    matches_baseline: float  # fraction of generations identical to the autoregressive one (1.0 when greedy)
    memory: MemoryReport
    generations: int  # per engine

    @property
    def memory_overhead(self) -> int:
        """Bytes the drafting arms hold beyond the target (memory.overhead_bytes)."""
        return self.memory.overhead_bytes

    def as_dict(self) -> dict:
        return {**asdict(self), "memory_overhead_bytes": self.memory.overhead_bytes}


def benchmark(
    engine, test_prompts: Sequence, num_runs: int = 3, max_new_tokens: int = 64,
    sampling: SamplingConfig | None = None,
) -> BenchmarkResult:
    if not test_prompts or num_runs < 1:
        raise ValueError(f"benchmark needs at least one prompt and num_runs >= 1 (got {len(test_prompts)} "
                         f"prompts, num_runs={num_runs})")
    if engine.selector is None:
        raise ValueError("this engine decodes autoregressively (bandit.policy='none'): configure draft arms "
                         "and a bandit policy to benchmark speculative decoding")
    baseline = engine.autoregressive()
    on_cuda = engine.device.type == "cuda"
    for e in (baseline, engine):
        e.generate(test_prompts[0], max_new_tokens, sampling)
    runs = {"baseline": [], "speculative": []}
    peaks = {"baseline": 0, "speculative": 0}
    for _ in range(num_runs):
        for prompt in test_prompts:
            for name, e in (("baseline", baseline), ("speculative", engine)):
                if on_cuda:
                    torch.cuda.reset_peak_memory_stats(engine.device)
                runs[name].append(e.generate(prompt, max_new_tokens, sampling))
                if on_cuda:
                    peaks[name] = max(peaks[name], torch.cuda.max_memory_allocated(engine.device))
    spec, base = runs["speculative"], runs["baseline"]
    rate, base_rate = _rate(spec), _rate(base)
    return BenchmarkResult(
        average_speedup=rate / base_rate, tokens_per_second=rate, baseline_tokens_per_second=base_rate,
        speculation_accuracy=acceptance(s for r in spec for s in r.arms.values()),
        tokens_per_step=sum(r.new_tokens for r in spec) / sum(r.steps for r in spec),
        matches_baseline=sum(a.token_ids == b.token_ids for a, b in zip(spec, base, strict=True)) / len(spec),
        memory=memory_report(engine, peaks["speculative"] - peaks["baseline"] if on_cuda else None),
        generations=len(spec),
    )


def _rate(results: list[GenerationResult]) -> float:
    return sum(r.new_tokens for r in results) / sum(r.wall_time_s for r in results)


def memory_report(engine, peak_delta: int | None = None) -> MemoryReport:
    target = tensor_storages(engine.target)
    arms = tensor_storages([arm for arm, _ in engine.pairs])
    mine = [(size, is_param) for ptr, (size, is_param) in arms.items() if ptr not in target]
    return MemoryReport(
        drafter_param_bytes=sum(size for size, is_param in mine if is_param),
        drafter_cache_bytes=sum(size for size, is_param in mine if not is_param),
        target_cache_bytes=sum(size for size, is_param in target.values() if not is_param),
        peak_cuda_delta_bytes=peak_delta,
    )


def tensor_storages(root) -> dict[int, tuple[int, bool]]:
    """Every tensor storage reachable from `root` through attributes, containers and modules:
    data pointer -> (bytes, whether a parameter uses it). Functions and methods are not followed."""
    found: dict[int, tuple[int, bool]] = {}
    seen: set[int] = set()
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or obj is None or isinstance(obj, (str, bytes, int, float, type, ModuleType)):
            continue
        seen.add(id(obj))
        if isinstance(obj, Tensor):
            storage = obj.untyped_storage()
            old = found.get(storage.data_ptr(), (0, False))
            found[storage.data_ptr()] = (storage.nbytes(), old[1] or isinstance(obj, nn.Parameter))
        elif isinstance(obj, dict):
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        elif hasattr(obj, "__dict__") and (isinstance(obj, nn.Module) or not callable(obj)):
            stack.extend(vars(obj).values())
    return found
