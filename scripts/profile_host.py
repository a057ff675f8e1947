"""Where the engine's host time goes between device steps: cProfile of AR decoding on a bench shape (CUDA).

    python3 scripts/profile_host.py --shape llama3.2-1b --new 256 --top 30
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from flashspec.bench.shapes import CONTEXT, SHAPES, make_engine, prompt_ids, random_llama  # noqa: E402
from flashspec.models.native import NativeLlama  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="llama3.2-1b", choices=sorted(SHAPES))
    parser.add_argument("--new", type=int, default=256)
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    model = NativeLlama(random_llama(args.shape), CONTEXT, graphs=True)
    engine = make_engine(model, tokenizer=None)
    prompt = prompt_ids(args.prompt, SHAPES[args.shape]["vocab_size"])
    engine.generate(prompt, args.new)  # compiles and captures
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    result = engine.generate(prompt, args.new)
    print(f"{args.shape}: {result.new_tokens / (time.perf_counter() - t0):.0f} tok/s unprofiled")
    profiler = cProfile.Profile()
    profiler.enable()
    engine.generate(prompt, args.new)
    profiler.disable()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
