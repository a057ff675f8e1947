"""Where the engine's host time goes between device steps: cProfile of AR decoding on a bench shape (CUDA),
and the host work per decoding step counted (Python calls, torch ops and, on CUDA, host-device syncs), all
outside the target's forward: what the engine adds to each step.

    python3 scripts/profile_host.py --shape llama3.2-1b --new 256 --top 30
    python3 scripts/profile_host.py --tiny --top 0                        # the CPU: the counts, tiny model
    python3 scripts/profile_host.py --tiny --top 0 --arm prompt_lookup    # speculative steps (gamma 4)
    python3 scripts/profile_host.py --tiny --top 0 --ar-chunk 0           # AR, one synchronised step a time
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from flashspec import BanditConfig, FlashSpecConfig, SpeculativeEngine, TargetConfig  # noqa: E402
from flashspec.arms import PromptLookupArm  # noqa: E402
from flashspec.bench.shapes import CONTEXT, SHAPES, prompt_ids, random_llama  # noqa: E402
from flashspec.models import load_model  # noqa: E402
from flashspec.models.native import NativeLlama  # noqa: E402

COUNTED = (17, 65)  # new tokens of the two counted requests: their difference is 48 tokens' worth of steps


class HostWork(TorchDispatchMode):
    """Python calls and torch (aten) ops outside `target.forward` (its own work is the device step's)."""

    def __init__(self, target) -> None:
        super().__init__()
        self.calls = self.ops = self.inside = 0
        self.target, self.forward = target, target.forward

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += not self.inside
        return func(*args, **(kwargs or {}))

    def _forward(self, *args, **kwargs):
        self.inside += 1
        try:
            return self.forward(*args, **kwargs)
        finally:
            self.inside -= 1

    def _call(self, frame, event, arg) -> None:
        self.calls += event in ("call", "c_call") and not self.inside

    def __enter__(self):
        self.target.forward = self._forward
        sys.setprofile(self._call)
        return super().__enter__()

    def __exit__(self, *exc) -> None:
        sys.setprofile(None)
        del self.target.forward
        super().__exit__(*exc)


def counts(engine, prompt: torch.Tensor, new: int) -> tuple[int, int, int, int]:
    """Steps, Python calls, torch ops and syncs (CUDA) of one request."""
    with HostWork(engine.target) as work:
        result = engine.generate(prompt, new)
    syncs = 0
    if torch.cuda.is_available():
        from flashspec.bench.measure import count_syncs

        syncs = count_syncs(lambda: engine.generate(prompt, new))
    return result.steps, work.calls, work.ops, syncs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="llama3.2-1b", choices=sorted(SHAPES))
    parser.add_argument("--tiny", action="store_true", help="the built-in tiny model on the CPU instead")
    parser.add_argument("--arm", choices=["prompt_lookup"], help="speculative steps (bandit fixed, gamma 4)")
    parser.add_argument("--ar-chunk", type=int, help="engine.ar_chunk (0: one synchronised AR step at a time)")
    parser.add_argument("--new", type=int, default=256)
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    if args.tiny:
        model, tokenizer = load_model("tiny", TargetConfig(device="cpu", max_context=CONTEXT))
        prompt = torch.tensor(tokenizer("the cat sat on the mat, the cat sat on the")["input_ids"])
    else:
        model, tokenizer = NativeLlama(random_llama(args.shape), CONTEXT, graphs=True), None
        prompt = prompt_ids(args.prompt, SHAPES[args.shape]["vocab_size"])
    arms = [PromptLookupArm()] if args.arm else []
    cfg = FlashSpecConfig(TargetConfig(device=str(model.device), max_context=CONTEXT), gammas=[4],
                          bandit=BanditConfig("fixed" if arms else "none"))
    engine = SpeculativeEngine(cfg, target=model, tokenizer=tokenizer, arms=arms)
    engine.eos_ids = set()  # every request decodes its whole budget
    engine.ar_chunk = engine.ar_chunk if args.ar_chunk is None else args.ar_chunk
    engine.generate(prompt, args.new)  # compiles and captures
    t0 = time.perf_counter()
    result = engine.generate(prompt, args.new)
    print(f"{'tiny (CPU)' if args.tiny else args.shape}: {result.new_tokens / (time.perf_counter() - t0):.0f} "
          f"tok/s unprofiled, {result.steps} steps")
    (s0, c0, o0, y0), (s1, c1, o1, y1) = (counts(engine, prompt, new) for new in COUNTED)
    tokens, steps = COUNTED[1] - COUNTED[0], s1 - s0
    print(f"host work outside the target's forward, new tokens {COUNTED[0]} to {COUNTED[1]} ({steps} steps): "
          f"per step {(c1 - c0) / steps:.0f} Python calls, {(o1 - o0) / steps:.1f} torch ops, "
          f"{(y1 - y0) / steps:.2f} syncs; per token {(c1 - c0) / tokens:.0f}, {(o1 - o0) / tokens:.1f}, "
          f"{(y1 - y0) / tokens:.2f}")
    if args.top:
        profiler = cProfile.Profile()
        profiler.enable()
        engine.generate(prompt, args.new)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
