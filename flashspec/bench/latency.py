"""Section b: one target forward of k = 1..17 new tokens (captured graph vs eager), and kernel profiles.

The profile splits each shape's captured one-token step, and the engine's AR step, into wall time, device
busy time by kernel kind and device idle time: summary.md sets them against the weight-read floor to
explain every missed speed target.
"""

from __future__ import annotations

import time

import torch

from flashspec.bench.context import Bench, log
from flashspec.bench.measure import DEVICE, device_ms, kernel_table, kernel_times
from flashspec.bench.shapes import CONTEXT, PROMPT_LENS, SMALL, TARGET, make_engine, prompt_ids
from flashspec.models import attention
from flashspec.models.native import NativeLlama


def latency(bench: Bench) -> list[dict]:
    rows, ks = [], ([1, 2, 5, 9, 17] if bench.quick else range(1, 18))
    for shape in bench.shapes():
        graph = bench.model(shape)
        eager = NativeLlama(bench.hf[shape], CONTEXT)
        start = PROMPT_LENS[0]
        for model in (graph, eager):
            model.reset()
            model.forward(bench.prompt(shape, start))
        for k in ks:
            block = prompt_ids(k, graph.vocab_size).to(DEVICE)
            row = dict(shape=shape, k=k, context=start)
            for name, model, reps in (("graph_ms", graph, 20), ("eager_ms", eager, 3)):
                row[name] = device_ms(lambda m=model, b=block, s=start: (m.crop(s), m.forward(b)), reps)
            rows.append(row)
        bench.step_ms[shape] = rows[-len(ks)]["graph_ms"]
        del eager
    return rows


def step_ms(bench: Bench, shape: str) -> float:
    """Device milliseconds of the shape's captured one-token step at context 1024 (section b's k = 1)."""
    if shape not in bench.step_ms:
        bench.step_ms[shape] = graph_step_ms(bench, shape, bench.model(shape))
    return bench.step_ms[shape]


def graph_step_ms(bench: Bench, shape: str, model: NativeLlama) -> float:
    start = PROMPT_LENS[0]
    model.reset()
    model.forward(bench.prompt(shape, start))
    block = prompt_ids(1, model.vocab_size).to(DEVICE)
    return device_ms(lambda: (model.crop(start), model.forward(block)), 20)


# The 8B and SmolLM2 steps under other Inductor options and decode-attention splits: where their time can go next.
# Each builds the model anew on the same weights (the layer compiled with these options, the graphs captured again).
# SmolLM2's step is launch-bound (12 kernels a layer, cuBLAS's GEMVs ~4 us each): max_autotune's Triton GEMMs
# lost on the 8B's large matrices, but may win on its small ones.
VARIANTS = {
    "coordinate_descent_tuning": (dict(coordinate_descent_tuning=True), None),
    "max_autotune": (dict(max_autotune=True), None),
    "attention programs_per_sm=1": (None, 1),
    "attention programs_per_sm=4": (None, 4),
}


def variants(bench: Bench) -> list[dict]:
    rows = []
    for shape in (TARGET, SMALL):
        base = bench.model(shape)
        rows.append(dict(shape=shape, variant="default", step_ms=step_ms(bench, shape)))
        for name, (options, programs) in VARIANTS.items():
            if bench.enough(90, f"{shape} step variant {name}"):
                rows.append(variant(bench, shape, base, name, options, programs))
                log(f"{shape} step variant {name}: {rows[-1]}")
    return rows


def variant(bench: Bench, shape: str, base: NativeLlama, name: str, options: dict | None,
            programs: int | None) -> dict:
    """The captured step of `shape` built anew on `base`'s weights, its layer compiled with Inductor's `options`,
    its attention at `programs` per SM (None: as now)."""
    saved = attention.PROGRAMS_PER_SM
    attention.PROGRAMS_PER_SM = programs or saved
    t0 = time.perf_counter()
    try:
        model = NativeLlama(base.model, CONTEXT, graphs=True, compile_options=options)
        row = dict(shape=shape, variant=name, step_ms=graph_step_ms(bench, shape, model),
                   build_s=time.perf_counter() - t0)
        del model
        return row
    except Exception as err:  # one variant failing leaves the others' numbers
        return dict(shape=shape, variant=name, error=repr(err)[:200])
    finally:
        attention.PROGRAMS_PER_SM = saved
        torch.cuda.empty_cache()


def profile(bench: Bench) -> list[dict]:
    """Per shape: kernels of the captured decoding step (k = 1, context 1024), and of our AR engine's
    decoding steps (a generation of 129 tokens less one of a single token: the same prefill)."""
    rows, steps = [], 128
    for shape in bench.shapes():
        model, start = bench.model(shape), PROMPT_LENS[0]
        block, prompt = prompt_ids(1, model.vocab_size).to(DEVICE), bench.prompt(shape, 64)

        def replays(m=model, b=block, s=start):
            for _ in range(steps):
                m.crop(s)
                m.forward(b)

        model.reset()
        model.forward(bench.prompt(shape, start))
        rows += kernel_table(shape, "graph step k=1", kernel_times(replays), steps)
        engine = make_engine(model, bench.tokenizer)
        generation = kernel_times(lambda e=engine, p=prompt: e.generate(p, steps + 1))
        prefill = kernel_times(lambda e=engine, p=prompt: e.generate(p, 1))
        decoding = (generation[0] - prefill[0], {
            name: [calls - prefill[1].get(name, [0, 0])[0], us - prefill[1].get(name, [0, 0])[1]]
            for name, (calls, us) in generation[1].items()
        })
        rows += kernel_table(shape, "engine AR step", decoding, steps)
    return rows
