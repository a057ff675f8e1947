"""Section d: the verifier per call, V = 128256, greedy and sampled (T = 0.8, top-p 0.9): the fused Triton
kernel, the PyTorch reference and torch.compile of the reference."""

from __future__ import annotations

from dataclasses import replace

import torch

import flashspec as fs
from flashspec.bench.context import Bench, log
from flashspec.bench.measure import DEVICE, graph_us, kernel_times, wall_us
from flashspec.bench.shapes import LLAMA3_IDS
from flashspec.verify import verify_reference, verify_triton
from flashspec.verify.triton_kernel import GPU, Launcher

VOCAB = LLAMA3_IDS["vocab_size"]


def verifier(bench: Bench) -> list[dict]:
    gammas = [8] if bench.quick else [1, 4, 8, 16]
    impls = {"triton": verify_triton, "reference": verify_reference,
             "compiled_reference": torch.compile(verify_reference)}
    modes = {"greedy": fs.SamplingConfig(), "sampled": fs.SamplingConfig(0.8, top_p=0.9)}
    rows = []
    for mode, sampling in modes.items():
        for gamma in gammas:
            args = verifier_inputs(gamma, sampling)
            reference = verify_reference(*args)
            for name, fn in impls.items():
                if fn is None or not bench.enough(20, f"verifier {name} {mode} gamma={gamma}"):
                    continue
                rows.append(measured(dict(mode=mode, gamma=gamma, impl=name), fn, args, reference,
                                     kernel_alone=name == "triton"))
    return rows + tunings(bench)


def measured(row: dict, fn, args: tuple, reference: tuple, kernel_alone: bool) -> dict:
    """`row` with fn's agreement with the reference's (n_accepted, tokens) and its timings, or its error: one
    implementation failing on this device leaves the others' numbers."""
    n_ref, tok_ref = int(reference[0]), reference[1]
    try:
        n, tokens = fn(*args)
        row["agrees_with_reference"] = int(n) == n_ref and torch.equal(tok_ref[0, : n_ref + 1], tokens[0, : n_ref + 1])
        row |= time_verifier(fn, args, kernel_alone)
    except Exception as err:
        row["error"] = repr(err)[:200]
    return row


# Launch shapes to try on the sampled call at gamma 8 (flat logits: the threshold often lies beyond the default's
# candidates), each a question about where its time goes (docs/verifier.md, "Where a sampled call's time goes"). Any
# tuning gives the same tokens; `agrees_with_reference` checks it. 040dc27 answered the search's own shapes
# (block_search 128 or 256, pivots_search 16, num_warps 4: all slower).
TUNINGS = {
    # The row finisher's bitonic sort of `cap` candidates (the search's time is its own kernel's).
    "cap=256": dict(cap=256), "cap=512": dict(cap=512), "cap=1024": dict(cap=1024), "cap=4096": dict(cap=4096),
    # Serial block steps per program: one block per chunk (3 load-and-reduce steps, not 12), or twice the programs.
    "block_v=8192": dict(block_v=8192), "chunk=4096": dict(block_v=4096, chunk=4096),
    # Candidates picked by 256 bins, not 64 (fewer rows left to the search); bisection over them, not the sort.
    "bins=256": dict(bins=256), "sort=False": dict(sort=False),
}
# The same call without top-p: the chunk statistics and the row finisher alone, no candidates, no threshold.
NO_TOP_P = "top_p=1"


def tunings(bench: Bench) -> list[dict]:
    """The sampled call at gamma 8 under each of TUNINGS and without top-p (impl `triton[name]`): where its time
    can go next."""
    rows = []
    cases = {name: (fs.SamplingConfig(0.8, top_p=0.9), replace(GPU, **change)) for name, change in TUNINGS.items()}
    cases[NO_TOP_P] = (fs.SamplingConfig(0.8), GPU)
    for name, (sampling, tuning) in cases.items():
        if bench.quick or not bench.enough(10, f"verifier tuning {name}"):
            continue
        args = verifier_inputs(8, sampling)
        rows.append(measured(dict(mode="sampled", gamma=8, impl=f"triton[{name}]"), verify_triton,
                             (*args, tuning), verify_reference(*args), kernel_alone=True))
    return rows


def time_verifier(fn, args: tuple, kernel_alone: bool) -> dict:
    """THE HOOK for the verifier work of issue 11: a per-call timing of one implementation on these inputs.
    `us_per_call`: as the engine sees it (back-to-back calls, one synchronisation at the end);
    `us_kernel_in_graph` (when `kernel_alone`): the same call captured in a CUDA graph, launch and host work
    removed; with it, `kernels` (each kernel's device time per call) and `direct_launches` (whether the compiled
    kernels were launched directly, triton_kernel.Launcher). A replacement keeps the first two keys; summary.md
    judges the target on `us_per_call`."""
    call = lambda: fn(*args)  # noqa: E731
    row = {"us_per_call": wall_us(call, 100)}
    if kernel_alone:
        row |= {"us_kernel_in_graph": graph_us(call), "direct_launches": Launcher.enabled, "kernels": kernels(call)}
    return row


def kernels(call, reps: int = 20) -> str:
    """Device microseconds per call of each kernel a call launches, from the profiler: where a call's time goes."""
    _, times = kernel_times(lambda: [call() for _ in range(reps)])
    return "; ".join(f"{name} x{calls / reps:g}: {us / reps:.1f} us"
                     for name, (calls, us) in sorted(times.items(), key=lambda kv: -kv[1][1]))


def verifier_inputs(gamma: int, sampling: fs.SamplingConfig) -> tuple:
    g = torch.Generator(DEVICE).manual_seed(gamma)
    logits = torch.randn(1, gamma + 1, VOCAB, device=DEVICE, generator=g) * 3
    tokens = logits[:, :gamma].argmax(-1)  # drafts the greedy target accepts: the whole path runs
    probs = None
    if not sampling.greedy:
        probs = (torch.randn(1, gamma, VOCAB, device=DEVICE, generator=g) * 3).softmax(-1)
    return logits, tokens, probs, sampling, torch.rand(1, gamma + 1, device=DEVICE, generator=g)


def verifier_ok() -> bool:
    """The fused kernel agrees with the reference on this device (else section c uses the reference)."""
    if verify_triton is None:
        return False
    try:
        for sampling in (fs.SamplingConfig(), fs.SamplingConfig(0.8, top_p=0.9)):
            args = verifier_inputs(4, sampling)
            (n, tokens), (n_ref, tok_ref) = verify_triton(*args), verify_reference(*args)
            n, n_ref = int(n), int(n_ref)
            if n != n_ref or not torch.equal(tokens[0, : n + 1], tok_ref[0, : n + 1]):
                return False
    except Exception as err:  # a broken kernel must not stop the benchmark
        log(f"verify_triton failed: {err!r}")
        return False
    return True


def host_us(reps: int = 20000) -> dict[str, float]:
    """Host microseconds per `verify_triton` call at gamma 8, V = 128256, on CPU tensors, with the kernels
    replaced by stand-ins that do Triton's own host work before a launch (binding and specialising the
    arguments, the cache key and lookup) and launch nothing: the wrapper's share of a call, measurable without
    a GPU. `python -m flashspec.bench.verifier`."""
    import timeit

    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import compute_cache_key, create_function_from_signature

    from flashspec.verify import triton_kernel

    class JIT:
        def __init__(self, fn) -> None:
            self.keys, self.cache = {}, {}
            backend = make_backend(GPUTarget("cuda", 90, 32))
            self.binder = create_function_from_signature(fn.signature, fn.params, backend)

        def __getitem__(self, grid):
            def run(*args, **kwargs):
                _, specialization, options = self.binder(*args, **kwargs, debug=False, instrumentation_mode="")
                return self.cache.setdefault(compute_cache_key(self.keys, specialization, options), "compiled")
            return run

    names = ("_verify_kernel", "_search_kernel", "_residual_kernel")
    saved = {name: getattr(triton_kernel, name) for name in names}
    out = {}
    try:
        for name in names:
            setattr(triton_kernel, name, JIT(saved[name]))
        for mode, sampling in {"greedy": fs.SamplingConfig(), "sampled": fs.SamplingConfig(0.8, top_p=0.9)}.items():
            logits = torch.randn(1, 9, VOCAB)
            probs = None if sampling.greedy else torch.rand(1, 8, VOCAB)
            args = (logits, logits[:, :8].argmax(-1), probs, sampling, torch.rand(1, 9), triton_kernel.GPU)
            triton_kernel.verify_triton(*args)
            best = min(timeit.repeat(lambda: triton_kernel.verify_triton(*args), number=reps, repeat=5))  # noqa: B023
            out[mode] = best / reps * 1e6
    finally:
        for name, fn in saved.items():
            setattr(triton_kernel, name, fn)
        triton_kernel._CHAIN_PLANS.clear()
    return out


if __name__ == "__main__":
    for mode, us in host_us().items():
        print(f"verify_triton host time per call, {mode}, kernels stubbed (CPU): {us:.1f} us")
