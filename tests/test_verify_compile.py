"""Every Triton kernel in flashspec compiles for the GPU (sm_90: H100, H200), checked on any machine.

Triton's interpreter (TRITON_INTERPRET=1, how the kernels run without a GPU: tests/conftest.py) accepts code
the GPU compiler rejects: a loop-carried variable whose type changes (int32 -> int64), a Python number where
a tensor is needed, and the like. Compiling needs no GPU: Triton's code generator, its MLIR passes and ptxas
(shipped with Triton) all run on the host. So the kernels' host wrappers run here on CPU tensors with each
kernel replaced by a recorder, and every recorded launch is compiled for sm_90 with its own arguments and
specialisations (greedy and sampled, chain lengths and tree sizes, vocabulary splits).

The compiling runs in a child process (`python tests/test_verify_compile.py`): the interpreter, on in the
test process of a CPU machine, has replaced every @triton.jit function with one it interprets.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch
import triton
import triton.language as tl

ROOT = Path(__file__).resolve().parents[1]
# The last GPU generation the project runs on (the lent H200, as the H100: compute capability 9.0).
ARCH = 90


# ------------------------------------------------------------------ in the child: discover, record, compile
def jit_functions() -> dict[str, object]:
    """Every @triton.jit function defined in flashspec, by "module:name"."""
    from triton.runtime.jit import JITFunction

    found = {}
    package = ROOT / "flashspec"
    for path in sorted(package.rglob("*.py")):
        if "@triton.jit" not in path.read_text():
            continue
        module = importlib.import_module(".".join(path.relative_to(ROOT).with_suffix("").parts))
        for name, value in vars(module).items():
            if isinstance(value, JITFunction) and value.__module__ == module.__name__:
                found[f"{module.__name__}:{name}"] = value
    return found


def kernels(functions: dict[str, object]) -> dict[str, object]:
    """The launched ones: the @triton.jit functions no other one calls."""
    called = set()
    for fn in functions.values():
        body = fn.src[fn.src.index("("):]  # from the parameters on: the function's own name is no call
        called |= set(re.findall(r"\b(\w+)\s*\(", body))
    return {key: fn for key, fn in functions.items() if fn.__name__ not in called}


class Recorder:
    """Stands in for a kernel: `kernel[grid](*args, **kwargs)` keeps the launch instead of running it."""

    def __init__(self) -> None:
        self.launches: list[tuple[tuple, dict]] = []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append((args, kwargs))


def launch_every_wrapper() -> None:
    """Call each kernel's host wrapper over the cases that specialise it differently, with the GPU's launch
    shape. A new kernel's wrapper goes here (the test says so when a kernel is never launched)."""
    from flashspec.config import SamplingConfig
    from flashspec.verify.tree_triton import verify_tree_triton
    from flashspec.verify.triton_kernel import GPU, verify_triton

    greedy, t1 = SamplingConfig(), SamplingConfig(1.0)
    top_k, top_p, both = SamplingConfig(1.0, top_k=50), SamplingConfig(0.8, top_p=0.9), SamplingConfig(0.7, 20, 0.8)
    g = torch.Generator().manual_seed(0)
    # (vocab, batch, gamma or tree size, sampling, stochastic draft): tree size 1 is specialised apart
    chains = [(128256, 1, 4, greedy, False), (128256, 2, 1, greedy, True), (128256, 1, 4, t1, False),
              (128256, 1, 4, t1, True), (128256, 2, 8, top_k, True), (128256, 1, 3, top_p, False),
              (128256, 2, 8, both, True), (1000, 1, 4, greedy, False), (1000, 2, 2, top_p, True)]
    for vocab, b, gamma, sampling, stochastic in chains:
        logits = torch.randn(b, gamma + 1, vocab, generator=g)
        probs = torch.rand(b, gamma, vocab, generator=g) if stochastic else None
        tokens = torch.randint(0, vocab, (b, gamma), generator=g)
        verify_triton(logits, tokens, probs, sampling, torch.rand(b, gamma + 1, generator=g), GPU)
    trees = [(128256, 1, greedy, False), (128256, 7, greedy, False), (128256, 64, greedy, False),
             (128256, 7, t1, False), (128256, 64, t1, True), (128256, 7, both, True), (128256, 1, top_p, False),
             (1000, 5, greedy, False), (1000, 5, top_k, True)]
    for vocab, n, sampling, stochastic in trees:
        logits = torch.randn(n + 1, vocab, generator=g)
        probs = torch.rand(n, vocab, generator=g) if stochastic else None
        parents = torch.tensor([i // 2 - 1 for i in range(n)])  # a binary tree: parents precede children
        tokens = torch.randint(0, vocab, (n,), generator=g)
        verify_tree_triton(logits, tokens, parents, probs, sampling, torch.rand(n + 1, generator=g), GPU)
    # Decode attention (no sampling modes): the H200's 132 SMs, the dtypes, head sizes and block lengths it meets.
    from flashspec.models import attention

    # 2048 slots: the 32 splits of the 8B and SmolLM2 shapes on the H200; a 64-slot cache has one split.
    cases = ((torch.bfloat16, 128, 32, 8, 1, 2048), (torch.bfloat16, 64, 9, 3, 9, 2048),
             (torch.float16, 128, 32, 8, 33, 256), (torch.float32, 64, 4, 2, 5, 256), (torch.bfloat16, 64, 9, 3, 1, 64))
    for dtype, dim, heads, kv_heads, n, span in cases:
        q = torch.randn(n, heads, dim).to(dtype)
        k, v = (torch.randn(kv_heads, span, dim).to(dtype) for _ in "kv")
        attention.launch(q, k, v, torch.arange(span - n, span), sms=132, upcast=False)
    # The GEMV experiment's kernel in every launch shape the bench tries (flashspec/bench/gemv.py).
    from flashspec.bench.gemv import CONFIGS
    from flashspec.models.gemv import gemv_triton

    for config in CONFIGS:
        gemv_triton(torch.randn(1, 4096).to(torch.bfloat16), torch.randn(64, 4096).to(torch.bfloat16), config)
    # Token trees (ancestor bitmasks) of the SmolLM2 and 8B shapes, up to the static step's 32 nodes.
    for heads, kv_heads, dim, n in ((9, 3, 64, 7), (32, 8, 128, 32)):
        q = torch.randn(n, heads, dim).to(torch.bfloat16)
        k, v = (torch.randn(kv_heads, 2048, dim).to(torch.bfloat16) for _ in "kv")
        paths = attention.tree_paths(torch.tensor([i // 2 - 1 for i in range(n)]))
        attention.launch(q, k, v, torch.arange(100, 100 + n), sms=132, upcast=False, paths=paths)


def compile_launch(fn, args: tuple, kwargs: dict) -> None:
    """Compile `fn` for sm_90 as `fn[grid](*args, **kwargs)` would on that GPU: the same signature,
    constexprs and specialisations (Triton's own binder makes them from the arguments), through ptxas."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    target = GPUTarget("cuda", ARCH, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    # The verifier's direct launches (triton_kernel.Launcher: every constexpr given) pass the parameters so.
    tail = fn.arg_names[len(args):]
    if all(name in kwargs for name in tail):
        direct = (*args, *(kwargs[name] for name in tail))
        assert all(a is b for a, b in zip(direct, bound.values(), strict=True)), "direct launch out of order"
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target, options=options.__dict__)


def check_kernels() -> list[str]:
    """Record every kernel's launches and compile each distinct one; the failures, described."""
    found = kernels(jit_functions())
    recorders = {key: Recorder() for key in found}
    for key, recorder in recorders.items():
        module, name = key.split(":")
        setattr(sys.modules[module], name, recorder)
    launch_every_wrapper()
    failures = []
    for key, fn in found.items():
        launches = recorders[key].launches
        flavours = {kwargs.get("GREEDY") for _, kwargs in launches}
        if not launches or flavours == {True} or flavours == {False}:
            failures.append(f"{key}: launched {len(launches)} times, GREEDY in {flavours}: make "
                            "launch_every_wrapper call its host wrapper, greedy and sampled")
        done = set()
        for args, kwargs in launches:
            described = str([(type(a).__name__, getattr(a, "dtype", a)) for a in args]) + str(kwargs)
            if described in done:
                continue
            done.add(described)
            start = time.perf_counter()
            try:
                compile_launch(fn, args, kwargs)
            except Exception as err:  # every failure is reported, not only the first
                failures.append(f"{key} with {kwargs}:\n{err}")
                continue
            print(f"compiled {key} for sm_{ARCH} in {time.perf_counter() - start:.1f} s: {kwargs}", flush=True)
    return failures


# ------------------------------------------------------------------ a canary: the old tree walk, in miniature
@triton.jit
def _walk_up_int64_parents(parents_ptr, out_ptr, start):
    """Walks from `start` to the root through int64 parents: `node` starts int32 and becomes int64, which the
    interpreter runs and the GPU compiler rejects (the token-tree kernel's bug in Triton 3.6)."""
    node = start
    steps = 0
    while node >= 0:
        node = tl.load(parents_ptr + node)
        steps += 1
    tl.store(out_ptr, steps)


def check_canary() -> list[str]:
    try:
        compile_launch(_walk_up_int64_parents, (torch.tensor([-1, 0, 1]), torch.zeros(1, dtype=torch.int32), 2),
                       {})
    except Exception as err:
        return [str(err)]
    return []


def main(argv: list[str]) -> int:
    failures = check_canary() if argv == ["canary"] else check_kernels()
    for failure in failures:
        print(f"FAILED {failure}\n", flush=True)
    return 1 if failures else 0


# ------------------------------------------------------------------ the tests (in pytest's process)
def compile_in_child(*args: str) -> subprocess.CompletedProcess:
    from conftest import child_environment

    env = child_environment()
    env.pop("TRITON_INTERPRET", None)
    return subprocess.run([sys.executable, __file__, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)


def test_every_kernel_compiles_for_the_gpu():
    done = compile_in_child()
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert "compiled flashspec.verify.tree_triton:_tree_kernel" in done.stdout
    assert "compiled flashspec.verify.triton_kernel:_verify_kernel" in done.stdout


def test_the_compile_check_catches_a_loop_carried_type_change():
    """The check has power: the walk the GPU rejected (and the interpreter ran) fails to compile here too."""
    done = compile_in_child("canary")
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Loop-carried variable node has initial type int32 but is re-assigned to int64" in done.stdout


if __name__ == "__main__":
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.exit("unset TRITON_INTERPRET: the interpreter replaces the kernels this compiles")
    sys.exit(main(sys.argv[1:]))
