"""Section c: speculative decoding with the controlled-acceptance arm (a 1B-shape draft) for alpha x gamma.

The measured speedup over our AR stands next to the ideal (1 - a^(g+1)) / ((1 - a)(g c + 1)), with c the
draft's captured step over the target's. Before a gamma's cells are timed, every shape its steps can take is
warmed: the target's blocks of 1..gamma+1 tokens, the draft's of 1 and 2, and the verifier at every draft
length 1..gamma. The last is the likely reason (alpha 0.8, gamma 2) measured 0.64 of its ideal in the first
H200 run (results/gpu/README.md): the fused verifier's Triton kernel specialises on the draft length, and a
draft of length 1 only happens when a request's budget ends on it, so the first cell whose acceptance path
landed there paid a compile inside its timing. Each row records the compiles and captures during the gamma's
warm-up and during its own timing (which should be none).
"""

from __future__ import annotations

import time

import torch

import flashspec as fs
from flashspec.arms import DraftModelArm
from flashspec.arms.controlled import ControlledArm
from flashspec.bench.context import Bench, log
from flashspec.bench.latency import step_ms
from flashspec.bench.measure import DEVICE, compile_counts, counts_since, decode_rate, device_ms, ideal_speedup
from flashspec.bench.shapes import DRAFT, TARGET, make_engine, prompt_ids
from flashspec.bench.verifier import verifier_ok
from flashspec.models.native import NativeLlama


def speculative(bench: Bench) -> list[dict]:
    alphas, gammas = ([0.8], [2]) if bench.quick else ([0.5, 0.7, 0.8, 0.9], [2, 4, 8])
    target, draft = bench.model(TARGET), bench.model(DRAFT)
    c = step_ms(bench, DRAFT) / step_ms(bench, TARGET)
    prompt = bench.prompt(TARGET, 64)
    ar = make_engine(target, bench.tokenizer)
    ar.generate(prompt, bench.new)
    base = ar.generate(prompt, bench.new)
    arm = ControlledArm(target, DraftModelArm(draft, name="draft"), alphas[0], bench.new + max(gammas) + 1)
    verifier = "triton" if verifier_ok() else "reference"
    models, rows = (target, draft), []
    for gamma in gammas:
        engine = make_engine(target, bench.tokenizer, "fixed", [arm], gamma, verifier)
        spent = time_learning(engine)
        before = compile_counts(models)
        engine.generate(prompt, bench.new)
        warm_shapes(engine, target, draft, gamma, prompt)
        warm = counts_since(before, compile_counts(models), "warmup")
        c_arm = draft_ms_per_token(arm.draft, prompt, gamma) / step_ms(bench, TARGET)
        for alpha in alphas:
            if not bench.enough(10, f"speculative alpha={alpha} gamma={gamma}"):
                continue
            arm.rate, arm.tested, arm.hits, spent[0] = alpha, 0, 0, 0.0
            before = compile_counts(models)
            result = engine.generate(prompt, bench.new)
            timed = counts_since(before, compile_counts(models), "timed")
            speedup, ideal = decode_rate(result) / decode_rate(base), ideal_speedup(alpha, gamma, c)
            rows.append(dict(
                alpha=alpha, gamma=gamma, c=c, c_arm=c_arm, speedup=speedup, ideal=ideal,
                efficiency=speedup / ideal, realized_alpha=arm.realized_rate,
                ideal_at_realized=ideal_speedup(arm.realized_rate, gamma, c),
                tau=result.new_tokens / max(len(result.emitted), 1), tok_s=decode_rate(result),
                ar_tok_s=decode_rate(base), matches_ar=result.token_ids == base.token_ids,
                learn_us_per_step=spent[0] / max(len(result.emitted), 1) * 1e6, verifier=verifier,
                draft_captured=draft.compiled and all(s.graph is not None for s in draft.steps.values()),
                **warm, **timed,
            ))
            if any(timed.values()):
                log(f"alpha={alpha} gamma={gamma}: one-off costs inside the timing: {timed}")
    return rows


def warm_shapes(engine: fs.SpeculativeEngine, target: NativeLlama, draft: NativeLlama, gamma: int,
                prompt: torch.Tensor) -> None:
    """Every block the gamma's requests can run: the target's 1..gamma+1 tokens (a request's last drafts are
    cut to its budget), the draft's 1 and 2 (what DraftModelArm re-feeds), and the verifier at every draft
    length (its Triton kernel specialises on it)."""
    for model, sizes in ((target, range(1, gamma + 2)), (draft, (1, 2))):
        model.reset()
        model.forward(prompt.to(DEVICE))
        for n in sizes:
            model.crop(len(prompt))
            model.forward(prompt_ids(n, model.vocab_size).to(DEVICE))
    for n in range(1, gamma + 1):
        logits = torch.randn(1, n + 1, target.vocab_size, device=DEVICE)
        tokens = logits[:, :n].argmax(-1)
        engine.verify(logits, tokens, None, fs.SamplingConfig(), torch.rand(1, n + 1, device=DEVICE))
    torch.cuda.synchronize()


def draft_ms_per_token(arm: DraftModelArm, prompt: torch.Tensor, gamma: int) -> float:
    """What a drafted token costs as the engine pays it: the draft arm's forwards and on-device sampling, back
    to back (c_arm = this / the target's step; c counts the captured step alone)."""
    arm.begin(prompt)
    generator = torch.Generator(DEVICE).manual_seed(0)
    propose = lambda: arm.propose(prompt, gamma, fs.SamplingConfig(), generator)  # noqa: E731
    return device_ms(propose, 20) / gamma


def time_learning(engine: fs.SpeculativeEngine) -> list[float]:
    """Wrap the engine's bandit bookkeeping with a timer; returns the accumulator (seconds)."""
    spent, learn = [0.0], engine._learn

    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        learn(*args, **kwargs)
        spent[0] += time.perf_counter() - t0

    engine._learn = timed
    return spent
