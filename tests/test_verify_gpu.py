"""The compiled verifier kernels on a GPU: the same n_accepted and tokens as the reference on many random inputs
(gamma 0..16, 0 being the engine's autoregressive step; vocabularies up to 151936; greedy and sampled), the
thresholds' slow path, CUDA graph capture.

The CPU suite runs the same kernels in Triton's interpreter (tests/test_verify.py); the GPU compiler is
stricter, and the launch shape differs, so these run where CUDA is."""

from __future__ import annotations

import pytest
import torch
from test_verify import SAMPLINGS, assert_same_outcome, make_inputs

from flashspec.config import SamplingConfig
from flashspec.verify import triton_kernel, verify_reference, verify_triton
from flashspec.verify.triton_kernel import _CHAIN_PLANS, Launcher

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

GPU_SAMPLINGS = SAMPLINGS | {"t0.8_topp0.9": SamplingConfig(temperature=0.8, top_p=0.9)}


@pytest.mark.parametrize("stochastic", [False, True])
@pytest.mark.parametrize("mode", sorted(GPU_SAMPLINGS))
def test_compiled_matches_reference_at_every_gamma(mode: str, stochastic: bool) -> None:
    sampling = GPU_SAMPLINGS[mode]
    for gamma in range(17):
        for seed in range(2):
            args = make_inputs(2, gamma, 128256, sampling, stochastic, seed=100 * gamma + seed, device="cuda")
            assert_same_outcome(verify_triton(*args[:3], sampling, args[3]),
                                verify_reference(*args[:3], sampling, args[3]))


@pytest.mark.parametrize("mode,stochastic", [("greedy", False), ("t0.8_topp0.9", True), ("t1", True)])
def test_direct_launches_run_and_match_reference(mode: str, stochastic: bool) -> None:
    # After a plan's first call through Triton's JIT, its kernels launch through the compiled kernels directly
    # (triton_kernel.Launcher); a direct launch that raised would have switched them off with a warning.
    sampling = GPU_SAMPLINGS[mode]
    for seed in range(4):
        args = make_inputs(1, 8, 128256, sampling, stochastic, seed=seed, device="cuda")
        assert_same_outcome(verify_triton(*args[:3], sampling, args[3]), verify_reference(*args[:3], sampling, args[3]))
    assert Launcher.enabled
    first = [plan.launches[0] for plan in _CHAIN_PLANS.values() if plan.launches[0].direct is not None]
    assert first
    # Triton 3.6 (the lent H200's): the C launcher itself, every pointer an int (verify_triton's host work
    # fell from 23 to 4 us a call with it).
    assert triton_kernel.raw_layout() != triton_kernel.RAW_LAYOUT or all(launch.raw for launch in first)


@pytest.mark.parametrize("vocab", [1000, 32000, 151936])
@pytest.mark.parametrize("mode", ["greedy", "t0.7_topk100_topp0.8", "t1"])
def test_compiled_matches_reference_at_other_vocabularies(vocab: int, mode: str) -> None:
    sampling = SAMPLINGS[mode]
    for gamma in (1, 5, 16):
        args = make_inputs(3, gamma, vocab, sampling, True, seed=vocab + gamma, device="cuda")
        assert_same_outcome(verify_triton(*args[:3], sampling, args[3]), verify_reference(*args[:3], sampling, args[3]))


@pytest.mark.parametrize("sampling", [SamplingConfig(1.5, top_p=0.98), SamplingConfig(1.0, top_k=20000),
                                      SamplingConfig(2.0, top_k=30000, top_p=0.99)])
def test_thresholds_beyond_the_candidates_match_reference(sampling: SamplingConfig) -> None:
    # Flat distributions: the nucleus (or the top-k) holds far more logits than the chunks keep as candidates,
    # so the row finisher falls back to its passes over the row.
    for seed in range(3):
        args = make_inputs(2, 4, 128256, sampling, True, seed=seed, device="cuda")
        args[0] = args[0] / 6
        assert_same_outcome(verify_triton(*args[:3], sampling, args[3]), verify_reference(*args[:3], sampling, args[3]))


@pytest.mark.parametrize("mode,stochastic",
                         [("greedy", False), ("t0.8_topp0.9", True), ("t0.7_topk100_topp0.8", False)])
def test_verification_replays_from_a_cuda_graph(mode: str, stochastic: bool) -> None:
    sampling = GPU_SAMPLINGS[mode]
    static = make_inputs(1, 8, 128256, sampling, stochastic, seed=0, device="cuda")
    verify_triton(*static[:3], sampling, static[3])  # the warm-up that plans the shape
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        n, tokens = verify_triton(*static[:3], sampling, static[3])
    for seed in range(1, 6):
        fresh = make_inputs(1, 8, 128256, sampling, stochastic, seed=seed, device="cuda")
        for dst, src in zip(static, fresh, strict=True):
            if dst is not None:
                dst.copy_(src)
        graph.replay()
        assert_same_outcome((n, tokens), verify_reference(*fresh[:3], sampling, fresh[3]))
