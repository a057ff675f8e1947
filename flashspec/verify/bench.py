"""Timing of the fused chain verifier as the engine sees it: what the GPU benchmark reports per call."""

from __future__ import annotations

import time

import torch

from flashspec.config import SamplingConfig
from flashspec.verify.reference import verify_reference
from flashspec.verify.triton_kernel import Tuning, verify_triton

# The benchmark's two modes: greedy, and nucleus sampling as chat models ship it.
MODES = {"greedy": SamplingConfig(), "sampled": SamplingConfig(0.8, top_p=0.9)}


def verifier_inputs(mode: str, gamma: int, vocab: int, device: str | torch.device, seed: int = 0) -> tuple:
    """Logits at an LLM-like scale, drafts the greedy target accepts (so the whole path runs), draft
    probabilities in the sampled mode, uniforms."""
    g = torch.Generator(device).manual_seed(seed + gamma)
    logits = torch.randn(1, gamma + 1, vocab, device=device, generator=g) * 3
    tokens = logits[:, :gamma].argmax(-1)
    sampling = MODES[mode]
    probs = None
    if not sampling.greedy:
        probs = (torch.randn(1, gamma, vocab, device=device, generator=g) * 3).softmax(-1)
    return logits, tokens, probs, sampling, torch.rand(1, gamma + 1, device=device, generator=g)


def time_verifier(mode: str, gamma: int, vocab: int = 128256, device: str | torch.device = "cuda",
                  reps: int = 200, tuning: Tuning | None = None) -> dict:
    """Microseconds per `verify_triton` call at `mode` ("greedy" or "sampled": temperature 0.8, top-p 0.9,
    stochastic drafts), `gamma` drafts and `vocab` logits on a CUDA device:

    us_per_call: back-to-back calls, one synchronisation at the end (what the engine pays per step);
    us_host: the same loop's host time before that synchronisation (Python, checks, launches);
    us_kernel_in_graph: device time per call replayed from a CUDA graph (launch overhead removed);
    agrees_with_reference: same n_accepted and tokens as `verify_reference` on these inputs."""
    args = verifier_inputs(mode, gamma, vocab, device)

    def call():
        return verify_triton(*args, tuning=tuning)

    n, tokens = call()
    n_ref, tokens_ref = verify_reference(*args)
    k = int(n_ref[0])
    agrees = int(n[0]) == k and torch.equal(tokens[0, : k + 1], tokens_ref[0, : k + 1])
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        call()
    t_host = time.perf_counter()
    torch.cuda.synchronize(device)
    t_end = time.perf_counter()
    return dict(mode=mode, gamma=gamma, vocab=vocab, us_per_call=(t_end - t0) / reps * 1e6,
                us_host=(t_host - t0) / reps * 1e6, us_kernel_in_graph=graph_us(call, reps, device),
                agrees_with_reference=agrees)


def graph_us(fn, reps: int, device: str | torch.device) -> float:
    """Device microseconds per call of `fn` captured in a CUDA graph (after a warm-up call on a side stream)."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    torch.cuda.synchronize(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        graph.replay()
    end.record()
    torch.cuda.synchronize(device)
    return start.elapsed_time(end) / reps * 1e3
