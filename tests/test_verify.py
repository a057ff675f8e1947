"""The verifier: the reference against direct float64 computations, the Triton kernel against the reference.

Kernel tests run on the `device` fixture (tests/conftest.py): the GPU when there is one, else the CPU, where
the kernel runs in Triton's interpreter.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import triton.compiler.compiler as triton_compiler
from triton.compiler import CompiledKernel

from flashspec.config import SamplingConfig
from flashspec.verify import process_logits, sample_from, triton_kernel, verify, verify_reference, verify_triton
from flashspec.verify.triton_kernel import _CHAIN_PLANS, Launcher, Tuning

SAMPLINGS = {
    "greedy": SamplingConfig(),
    "t1": SamplingConfig(temperature=1.0),
    "topk50": SamplingConfig(temperature=1.0, top_k=50),
    "topp0.9": SamplingConfig(temperature=1.0, top_p=0.9),
    "t0.7_topp0.8": SamplingConfig(temperature=0.7, top_p=0.8),
    "t0.7_topk100_topp0.8": SamplingConfig(temperature=0.7, top_k=100, top_p=0.8),
}


def make_inputs(b: int, g: int, vocab: int, sampling: SamplingConfig, stochastic: bool, seed: int,
                device: torch.device | str = "cpu"):
    """Random logits at an LLM-like scale; draft tokens half from the target (acceptances), half from q.
    Row 0 drafts from the target itself (q = p when stochastic), so long acceptances and bonus samples
    happen too."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, g + 1, vocab, generator=gen) * 3
    p = process_logits(logits[:, :g], sampling)
    q = torch.softmax(torch.randn(b, g, vocab, generator=gen) * 3, -1)
    q[0] = p[0]
    from_p = torch.multinomial(p.reshape(-1, vocab), 1, generator=gen).view(b, g)
    from_q = torch.multinomial(q.reshape(-1, vocab), 1, generator=gen).view(b, g)
    tokens = torch.where(torch.rand(b, g, generator=gen) < 0.5, from_p, from_q)
    tokens[0] = from_p[0]
    u = torch.rand(b, g + 1, generator=gen)
    draft_probs = q if stochastic else None
    return [x.to(device) if x is not None else None for x in (logits, tokens, draft_probs, u)]


def assert_same_outcome(ours, theirs) -> None:
    """Same n_accepted and the same tokens[:n + 1] per row (later entries are unspecified)."""
    (n, tokens), (n_ref, tokens_ref) = ours, theirs
    assert torch.equal(n.cpu(), n_ref.cpu())
    for row, k in enumerate(n_ref.tolist()):
        assert torch.equal(tokens[row, : k + 1].cpu(), tokens_ref[row, : k + 1].cpu()), f"row {row}, n={k}"


# Every vocab size and gamma, every sampling mode and both draft kinds, without the full cross product
# (the interpreter runs about a millisecond per operation).
CASES = [
    (32000, 1, "greedy", False),
    (32000, 16, "t1", True),
    (32000, 8, "t0.7_topk100_topp0.8", False),
    (128256, 2, "topk50", True),
    (128256, 4, "topp0.9", False),
    (128256, 8, "t1", False),
    (151936, 16, "greedy", True),
    (151936, 4, "t0.7_topp0.8", True),
]


@pytest.mark.parametrize("vocab,gamma,mode,stochastic", CASES)
def test_triton_matches_reference(vocab: int, gamma: int, mode: str, stochastic: bool, device) -> None:
    args = make_inputs(2, gamma, vocab, SAMPLINGS[mode], stochastic, seed=vocab + gamma, device=device)
    assert_same_outcome(verify_triton(*args[:3], SAMPLINGS[mode], args[3]),
                        verify_reference(*args[:3], SAMPLINGS[mode], args[3]))


# The GPU's launch shape on a small vocabulary: several chunks and blocks per row, and threshold searches
# that pass over the row before the candidates fit in registers.
GPU_LIKE = Tuning(block_v=256, chunk=1024, cap=64, pivots_row=2, pivots_cand=8, num_warps=4)


@pytest.mark.parametrize("mode,stochastic", [("t1", True), ("t0.7_topk100_topp0.8", True), ("greedy", False)])
def test_triton_matches_reference_in_gpu_launch_shape(mode: str, stochastic: bool, device) -> None:
    args = make_inputs(2, 3, 3000, SAMPLINGS[mode], stochastic, seed=7, device=device)
    assert_same_outcome(verify_triton(*args[:3], SAMPLINGS[mode], args[3], GPU_LIKE),
                        verify_reference(*args[:3], SAMPLINGS[mode], args[3]))


@pytest.mark.parametrize("impl", [verify_reference, verify_triton])
def test_rejection_without_residual_mass_samples_the_target(impl, device) -> None:
    # Greedy target, q one-hot at the argmax but a different token drafted: p(x) = q(x) = 0 rejects, and
    # max(p - q, 0) is all zero, so the sample must come from p.
    logits = torch.randn(1, 2, 64, generator=torch.Generator().manual_seed(0)).to(device)
    best = logits.argmax(-1)
    q = torch.nn.functional.one_hot(best[:, :1], 64).float()
    n, tokens = impl(logits, (best[:, :1] + 1) % 64, q, SamplingConfig(), torch.full((1, 2), 0.5, device=device))
    assert n.tolist() == [0] and tokens[0, 0] == best[0, 0]


def test_greedy_accepts_exactly_the_argmax_prefix(device) -> None:
    logits = torch.randn(4, 6, 100, generator=torch.Generator().manual_seed(1)).to(device)
    best = logits.argmax(-1)
    drafts = best[:, :5].clone()
    drafts[1, 2] = (drafts[1, 2] + 1) % 100
    drafts[2, 0] = (drafts[2, 0] + 1) % 100
    u = torch.rand(4, 6, generator=torch.Generator().manual_seed(2))  # on the CPU: the reference moves it
    n, tokens = verify_reference(logits, drafts.cpu(), None, SamplingConfig(), u)
    assert n.tolist() == [5, 2, 0, 5] and tokens.device == logits.device
    for row, k in enumerate(n.tolist()):
        assert torch.equal(tokens[row, : k + 1], best[row, : k + 1])


def test_verify_on_cpu_is_the_reference() -> None:
    args = make_inputs(2, 3, 500, SAMPLINGS["t1"], True, seed=3)
    sampling = SAMPLINGS["t1"]
    assert_same_outcome(verify(*args[:3], sampling, args[3]), verify_reference(*args[:3], sampling, args[3]))


# ---------------------------------------------------------------- logit processing and sampling


def expected_probs(logits: np.ndarray, temperature: float, top_k: int, top_p: float) -> np.ndarray:
    """The Sampling contract, directly, in float64, one row at a time."""
    z = logits.astype(np.float64) / temperature
    keep = np.ones_like(z, dtype=bool)
    if top_k:
        keep = logits >= np.sort(logits)[::-1][top_k - 1]
    p = np.where(keep, np.exp(z - z.max()), 0.0)
    p /= p.sum()
    if top_p < 1:
        ordered = np.sort(p)[::-1]
        at = ordered[np.argmax(np.cumsum(ordered) >= top_p)]
        keep &= p >= at
        p = np.where(keep, p, 0.0)
        p /= p.sum()
    return p


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.5, 0, 1.0), (1.0, 7, 1.0),
                                                     (1.0, 0, 0.9), (0.7, 0, 0.5), (1.3, 20, 0.8)])
def test_process_logits_matches_float64(temperature: float, top_k: int, top_p: float) -> None:
    gen = torch.Generator().manual_seed(top_k + int(100 * top_p))
    # Logits on a coarse grid: many exact ties, which top-k and top-p must keep together.
    logits = (torch.randn(6, 200, generator=gen) * 4).round() / 2
    probs = process_logits(logits, SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p))
    assert probs.dtype == torch.float32
    for row in range(6):
        want = expected_probs(logits[row].numpy(), temperature, top_k, top_p)
        assert np.array_equal(probs[row].numpy() > 0, want > 0)
        np.testing.assert_allclose(probs[row].numpy(), want, rtol=1e-5, atol=1e-7)


def test_process_logits_greedy_is_one_hot_at_the_first_argmax() -> None:
    logits = torch.tensor([[0.0, 3.0, 1.0, 3.0], [5.0, 5.0, 5.0, 5.0]])
    probs = process_logits(logits, SamplingConfig())
    assert torch.equal(probs, torch.tensor([[0.0, 1, 0, 0], [1, 0, 0, 0]]))


def test_sample_from_is_the_inverse_cdf(device) -> None:
    probs = torch.tensor([0.1, 0.0, 0.3, 0.0, 0.6], device=device).expand(7, 5)
    u = torch.tensor([0.0, 0.05, 0.1, 0.2, 0.4, 0.7, 0.9999])  # on the CPU, as the engine's may be
    cdf = np.cumsum([0.1, 0.0, 0.3, 0.0, 0.6])
    # First index whose cumulative mass exceeds u * total: zero-mass tokens are never drawn.
    want = np.searchsorted(cdf, u.numpy() * cdf[-1], side="right")
    assert sample_from(probs, u).tolist() == want.tolist()
    assert sample_from(probs * 3, u).tolist() == want.tolist()  # unnormalised mass is fine


# ---------------------------------------------------------------- bad input


def test_non_finite_logits_are_rejected() -> None:
    logits, tokens, _, u = make_inputs(1, 2, 50, SAMPLINGS["t1"], False, seed=0)
    logits[0, 1, 3] = float("nan")
    with pytest.raises(ValueError, match="non-finite logits"):
        verify_reference(logits, tokens, None, SAMPLINGS["t1"], u)


@pytest.mark.parametrize("impl", [verify_reference, verify_triton])
def test_mismatched_shapes_are_rejected(impl, device) -> None:
    logits, tokens, q, u = make_inputs(2, 3, 50, SAMPLINGS["t1"], True, seed=0, device=device)
    with pytest.raises(ValueError, match="draft_tokens has shape"):
        impl(logits, tokens[:, :2], q, SAMPLINGS["t1"], u)
    with pytest.raises(ValueError, match="draft_probs has shape"):
        impl(logits, tokens, q[..., :49], SAMPLINGS["t1"], u)
    with pytest.raises(ValueError, match="uniforms has shape"):
        impl(logits, tokens, q, SAMPLINGS["t1"], u[:, :3])
    with pytest.raises(ValueError, match="int64"):
        impl(logits, tokens.int(), q, SAMPLINGS["t1"], u)


# ---------------------------------------------------------------- the chain kernel's launch plan and thresholds

# The GPU's launch shape on a small vocabulary, with few candidates per chunk (8): top-k / top-p thresholds
# among them are found by a sort (or a bisection), the others by passes over the row: all give the reference's.
# The interpreter pays per operation and per program: few rows and chunks (tests/test_verify_gpu.py covers
# every gamma up to 16 at V = 128256 on a GPU).
FEW_CANDIDATES = Tuning(block_v=128, chunk=256, cap=32, pivots_row=4, pivots_cand=8, num_warps=4, bins=16)
THRESHOLD_MODES = {
    "topk3": SamplingConfig(temperature=0.9, top_k=3),  # inside the candidates
    "topk100": SamplingConfig(temperature=0.9, top_k=100),  # beyond them
    "t0.5_topp0.9": SamplingConfig(temperature=0.5, top_p=0.9),  # a small nucleus
    "t3_topp0.95": SamplingConfig(temperature=3.0, top_p=0.95),  # a wide one
    "topk3_topp0.5": SamplingConfig(temperature=0.7, top_k=3, top_p=0.5),
    "topk40_topp0.99": SamplingConfig(temperature=2.0, top_k=40, top_p=0.99),
}


@pytest.mark.parametrize("sort", [True, False])
@pytest.mark.parametrize("mode", sorted(THRESHOLD_MODES))
def test_candidate_thresholds_match_reference(mode: str, sort: bool, device) -> None:
    sampling, tuning = THRESHOLD_MODES[mode], replace(FEW_CANDIDATES, sort=sort)
    for gamma in (1, 3):
        args = make_inputs(1, gamma, 700, sampling, gamma == 3, seed=gamma, device=device)
        assert_same_outcome(verify_triton(*args[:3], sampling, args[3], tuning),
                            verify_reference(*args[:3], sampling, args[3]))


@pytest.mark.parametrize("mode", ["greedy", "t0.7_topp0.8", "topk50"])
def test_repeated_calls_reuse_the_plan_and_agree(mode: str, device) -> None:
    # The later calls run on the cached workspace, whose counters the kernels reset themselves.
    sampling = SAMPLINGS[mode]
    for seed, gamma in [(0, 2), (1, 2), (2, 2), (3, 16)]:
        args = make_inputs(1, gamma, 2000, sampling, True, seed=seed, device=device)
        assert_same_outcome(verify_triton(*args[:3], sampling, args[3], GPU_LIKE),
                            verify_reference(*args[:3], sampling, args[3]))
    assert all(not plan.counters.any() for plan in _CHAIN_PLANS.values())


@pytest.mark.parametrize("mode", ["greedy", "t0.7_topk100_topp0.8"])
def test_no_draft_samples_the_target_as_the_engine_did(mode: str, device) -> None:
    # The engine's autoregressive step: gamma = 0, the token comes from p with the one uniform.
    sampling = SAMPLINGS[mode]
    logits, _, _, u = make_inputs(1, 0, 2000, sampling, False, seed=5, device=device)
    want = sample_from(process_logits(logits[0], sampling), u[0])
    for impl in (verify_reference, verify_triton):
        n, tokens = impl(logits, torch.zeros(1, 0, dtype=torch.long, device=device), None, sampling, u)
        assert n.tolist() == [0] and tokens.tolist() == [want.tolist()]


# ---------------------------------------------------------------- threshold searches spread over programs

# Several chunks of few candidates each (4): on flat logits every row's threshold lies beyond the candidates,
# where the first kernel hands the search to _search_kernel (bisection steps across the row's chunks).
SPREAD = Tuning(block_v=256, chunk=512, cap=32, pivots_row=2, pivots_cand=8, num_warps=4, bins=16, pivots_search=8,
                block_search=256)
FLAT_MODES = {
    "t1.5_topp0.98": SamplingConfig(temperature=1.5, top_p=0.98),
    "topk700": SamplingConfig(temperature=1.0, top_k=700),
    "t2_topk1000_topp0.9": SamplingConfig(temperature=2.0, top_k=1000, top_p=0.9),
}


# passes = 0: the row finisher's own passes over the row (the old path); 1: one step across programs, the
# finisher's passes do the rest; 3: the steps across programs leave at most `cap` logits to the finisher.
@pytest.mark.parametrize("mode,passes", [(mode, 3) for mode in sorted(FLAT_MODES)]
                         + [("t1.5_topp0.98", 0), ("t2_topk1000_topp0.9", 1)])
def test_thresholds_beyond_the_candidates_spread_over_programs(mode: str, passes: int, device) -> None:
    sampling, tuning = FLAT_MODES[mode], replace(SPREAD, search_passes=passes)
    args = make_inputs(1, 2, 2000, sampling, True, seed=passes, device=device)
    args[0] = args[0] / 6  # flat: the nucleus (or the top-k) holds hundreds of tokens, the candidates 4 a chunk
    assert_same_outcome(verify_triton(*args[:3], sampling, args[3], tuning),
                        verify_reference(*args[:3], sampling, args[3]))
    plan = next(plan for key, plan in _CHAIN_PLANS.items()
                if key[:4] == (sampling.temperature, sampling.top_k, sampling.top_p, tuning))
    stage, *_, n_in = plan.search.view(-1, 9)[:, :4].T.cpu()
    assert set(stage.tolist()) <= {0, -1}  # every search ended: the next call starts clean
    if passes:  # every row took the search (its last interval, kept for this check, holds the threshold)...
        assert (n_in >= 1).all()
        if passes == 3:  # ...and was left with few enough logits to finish in registers
            assert (n_in <= 32).all(), n_in


@pytest.mark.parametrize("mode", sorted(FLAT_MODES))
def test_a_search_left_with_few_logits_gathers_them_across_programs(mode: str, device) -> None:
    # 16 pivots a step over 2000 flat logits: after one or two steps the interval holds at most `cap` = 128, so
    # the next step's programs each store their chunk's logits in it and the last finishes in registers.
    sampling, tuning = FLAT_MODES[mode], replace(SPREAD, search_passes=3, cap=128, pivots_search=16)
    for seed in range(3):
        args = make_inputs(1, 2, 2000, sampling, True, seed=seed, device=device)
        args[0] = args[0] / 6
        assert_same_outcome(verify_triton(*args[:3], sampling, args[3], tuning),
                            verify_reference(*args[:3], sampling, args[3]))
        plan = next(plan for key, plan in _CHAIN_PLANS.items()
                    if key[:4] == (sampling.temperature, sampling.top_k, sampling.top_p, tuning))
        stage = plan.search.view(-1, 9)[:, 0].cpu()
        assert (stage == -1).all(), stage


class _FakeCompiled(CompiledKernel):
    """Triton's own compiled-kernel runner (`CompiledKernel.__getitem__`, which reads grid[0], grid[1] and
    grid[2]) over a launch that records its arguments instead of reaching a GPU; with `raw`, a C launcher
    of Triton 3.6's layout (`run.launch`, no scratch memory) that records them."""

    function, packed_metadata, module = "function", "packed", None

    def __init__(self, calls: list, fail: bool = False, raw: bool = False) -> None:  # none of its state is needed
        self.calls, self.fail, self.raw = calls, fail, raw

    def _init_handles(self) -> None:
        pass

    def launch_metadata(self, grid, stream, *args) -> None:
        return None

    @property
    def run(self):
        def launch(gx, gy, gz, stream, function, packed, metadata, enter, exit_, *args):
            if self.fail:
                raise TypeError("the launcher's arguments do not match")
            self.calls.append(("direct", (gx, gy, gz), args))

        def raw(gx, gy, gz, stream, function, cooperative, pdl, scratch, profile, packed, metadata, enter, exit_,
                *args):
            self.calls.append(("raw", (gx, gy, gz, stream, function, cooperative, pdl, packed), args))

        if not self.raw:
            return launch
        launch.launch, launch.launch_cooperative_grid, launch.launch_pdl = raw, False, True
        launch.global_scratch_size = launch.profile_scratch_size = 0
        return launch


class _FakeJIT:
    """A JIT-compiled kernel `k(x_ptr, n, BLOCK: constexpr, FLAG: constexpr)`: records launches through the JIT."""

    arg_names = ["x_ptr", "n", "BLOCK", "FLAG"]

    def __init__(self, fail: bool = False, raw: bool = False) -> None:
        self.calls: list = []
        self.fail, self.raw = fail, raw

    def __getitem__(self, grid):
        def run(*args, **constants):
            self.calls.append(("jit", grid, args, constants))
            return _FakeCompiled(self.calls, self.fail, self.raw)
        return run


@pytest.fixture
def cuda_stream_stub(monkeypatch):
    """The runner asks Triton's driver for the current stream, the raw launch torch: this machine may have no GPU
    driver."""
    class Active:
        get_current_device = staticmethod(lambda: 0)
        get_current_stream = staticmethod(lambda device: 7)
    monkeypatch.setattr(triton_compiler, "driver", type("Driver", (), {"active": Active}))
    monkeypatch.setattr(triton_kernel, "current_stream", lambda device: 7)
    monkeypatch.setattr(Launcher, "enabled", True)


def test_launcher_goes_direct_after_the_first_aligned_launch(cuda_stream_stub) -> None:
    kernel, x = _FakeJIT(), torch.zeros(8)
    launch = Launcher(kernel, (3, 2), dict(FLAG=True, BLOCK=64, num_warps=4), (5,))  # a 2-D grid, as the residual's
    launch(x[1:])  # unaligned: compiled apart, never reused
    launch(x)
    launch(x)
    launch(x[1:])
    assert [call[0] for call in kernel.calls] == ["jit", "jit", "direct", "jit"]
    # The grid reaches the runner in 3-D, and the parameters in signature order, constexprs included, as Triton's
    # JIT passes them; the inputs as their pointers.
    assert kernel.calls[2] == ("direct", (3, 2, 1), (x.data_ptr(), 5, 64, True))


def test_launcher_calls_a_known_c_launcher_raw(cuda_stream_stub, monkeypatch) -> None:
    monkeypatch.setattr(triton_kernel, "raw_layout", lambda: triton_kernel.RAW_LAYOUT)
    kernel, x, out = _FakeJIT(raw=True), torch.zeros(8), torch.zeros(4)
    launch = Launcher(kernel, (3, 2), dict(FLAG=True, BLOCK=64), (out,))
    launch(x)
    launch(x)
    # The C launcher of Triton 3.6: stream, function, its flags and metadata, no hooks; every pointer an int.
    assert kernel.calls[1] == ("raw", (3, 2, 1, 7, "function", False, True, "packed"),
                               (x.data_ptr(), out.data_ptr(), 64, True))
    monkeypatch.setattr(triton_kernel, "raw_layout", lambda: "another layout")
    kernel = _FakeJIT(raw=True)
    launch = Launcher(kernel, (3, 2), dict(FLAG=True, BLOCK=64), (out,))
    launch(x)
    launch(x)
    assert kernel.calls[1] == ("direct", (3, 2, 1), (x.data_ptr(), out, 64, True))


def test_a_failing_direct_launch_falls_back_to_the_jit(cuda_stream_stub) -> None:
    kernel, x = _FakeJIT(fail=True), torch.zeros(8)
    launch = Launcher(kernel, (3, 1, 1), dict(FLAG=False, BLOCK=64), (5,))
    launch(x)
    with pytest.warns(RuntimeWarning, match="direct kernel launches failed"):
        launch(x)
    launch(x)
    assert [call[0] for call in kernel.calls] == ["jit", "jit", "jit"]
    assert not Launcher.enabled
