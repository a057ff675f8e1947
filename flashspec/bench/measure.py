"""Timers, bandwidth, synchronisation counts, kernel profiles and compile counts: how the sections measure."""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable, Iterable

import torch

DEVICE = "cuda"


def sync() -> None:
    torch.cuda.synchronize()


def device_ms(fn: Callable, reps: int) -> float:
    """Mean milliseconds per call of `fn` over `reps` back-to-back calls (after one), timed by CUDA events."""
    fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    sync()
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    sync()
    return start.elapsed_time(end) / reps


def wall_us(fn: Callable, reps: int) -> float:
    """Mean microseconds per call as a caller sees it: back-to-back calls, one synchronisation at the end."""
    fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    sync()
    return (time.perf_counter() - t0) / reps * 1e6


def graph_us(fn: Callable, reps: int = 100) -> float:
    """Device microseconds per call of `fn` captured in a CUDA graph (launch overhead removed)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return device_ms(graph.replay, reps) * 1e3


def copy_bandwidth() -> float:
    """Bytes read plus bytes written per second by a 2 GiB device-to-device copy (median of 10)."""
    src = torch.randn(1 << 30, device=DEVICE, dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    times = []
    for _ in range(12):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        sync()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * src.numel() * src.element_size() / statistics.median(times[2:])


def decode_rate(result) -> float:
    """Tokens per second after the first token (the prefill and its sample excluded)."""
    return (result.new_tokens - 1) / (result.wall_time_s - result.ttft_s)


def count_syncs(fn: Callable) -> int:
    """Host-device synchronisations that `fn` triggers (CUDA's sync debug mode warns at each)."""
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fn()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def ideal_speedup(alpha: float, gamma: int, c: float) -> float:
    """Leviathan et al.: expected tokens per step over the step's cost in target forwards."""
    tokens = gamma + 1 if alpha == 1 else (1 - alpha ** (gamma + 1)) / (1 - alpha)
    return tokens / (gamma * c + 1)


# ---------------------------------------------------------------- one-off costs inside a timed region
TRITON_COMPILES = [0]  # kernels Triton compiled (a new specialisation each) since watch_triton()


def watch_triton() -> None:
    """Count every Triton compile from now on (Triton >= 3.4 calls knobs.runtime.jit_post_compile_hook)."""
    try:
        from triton import knobs

        previous = knobs.runtime.jit_post_compile_hook
    except (ImportError, AttributeError):  # no Triton, or one without this hook: the count reads -1 in the CSVs
        TRITON_COMPILES[0] = -1
        return
    if getattr(previous, "counts_compiles", False):  # already watching
        return

    def counted(*args, **kwargs):
        TRITON_COMPILES[0] += 1
        return previous(*args, **kwargs) if previous else None

    counted.counts_compiles = True
    knobs.runtime.jit_post_compile_hook = counted


def compile_counts(models: Iterable) -> dict[str, int]:
    """Running totals of the one-off costs a timing must not contain: Triton kernels compiled, graphs Dynamo
    compiled, CUDA graphs captured by these models. The difference of two calls says what happened between."""
    from torch._dynamo.utils import counters

    graphs = sum(getattr(step, "graph", None) is not None for m in models for step in getattr(m, "steps", {}).values())
    return {"triton_compiles": TRITON_COMPILES[0], "dynamo_graphs": counters["stats"]["unique_graphs"],
            "graph_captures": graphs}


def counts_since(before: dict[str, int], after: dict[str, int], prefix: str) -> dict[str, int]:
    return {f"{prefix}_{k}": after[k] - before[k] for k in before}


# ---------------------------------------------------------------- kernel profiles
KERNEL_KINDS = (  # name fragments -> kind, first match wins
    (("gemv", "gemm", "nvjet", "cutlass", "xmma", "sm90"), "matmul"),
    (("fmha", "attention", "flash", "softmax"), "attention"),
    (("triton",), "fused (inductor/triton)"),
    (("copy", "memcpy", "memset", "fill", "cat", "index"), "copy/index"),
)


def kernel_kind(name: str) -> str:
    low = name.lower()
    return next((kind for keys, kind in KERNEL_KINDS if any(k in low for k in keys)), "other")


def kernel_times(fn: Callable) -> tuple[float, dict[str, list[float]]]:
    """Wall seconds of `fn` under the profiler, and per kernel name [calls, device microseconds]."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    sync()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        fn()
        sync()
        wall = time.perf_counter() - t0
    kernels: dict[str, list[float]] = {}
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            entry = kernels.setdefault(event.name, [0, 0.0])
            entry[0] += 1
            entry[1] += getattr(event, "device_time", None) or getattr(event, "cuda_time", 0.0)
    return wall, kernels


def kernel_table(shape: str, what: str, times: tuple[float, dict[str, list[float]]], steps: int) -> list[dict]:
    """Per step: wall time, device-busy time by kernel kind, the top kernels. Wall - busy = device idle."""
    wall, kernels = times
    rows = [dict(shape=shape, profile=what, kernel=name[:120], kind=kernel_kind(name), calls_per_step=calls / steps,
                 us_per_step=us / steps) for name, (calls, us) in kernels.items() if calls > 0]
    rows.sort(key=lambda r: -r["us_per_step"])
    summary = [dict(shape=shape, profile=what, kernel="(wall, profiled)", kind="total", us_per_step=wall * 1e6 / steps)]
    for kind in ["total"] + sorted({r["kind"] for r in rows}):
        part = [r for r in rows if kind in ("total", r["kind"])]
        summary.append(dict(shape=shape, profile=what, kernel=f"(device busy: {kind})", kind=kind,
                            us_per_step=sum(r["us_per_step"] for r in part),
                            calls_per_step=sum(r["calls_per_step"] for r in part)))
    return summary + rows[:25]
