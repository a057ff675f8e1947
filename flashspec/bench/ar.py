"""Section a: AR decode tok/s and time to first token, batch 1, after a 64- and a 1024-token prompt.

flashspec against the memory roofline (weight bytes per token / measured copy bandwidth) and against Hugging
Face `generate` (eager; static cache + torch.compile) on the same weights, for every random-weight shape and,
with --smollm2, the real converted SmolLM2-135M; plus checks (our logits against Hugging Face's, graph
against eager) and the host-device synchronisations per step.
"""

from __future__ import annotations

import time

import torch

import flashspec as fs
from flashspec.bench.context import Bench, log
from flashspec.bench.measure import DEVICE, count_syncs, decode_rate, sync
from flashspec.bench.shapes import CONTEXT, DRAFT, PROMPT_LENS, REAL_SMOLLM2, make_engine, prompt_ids, weight_bytes
from flashspec.models import load_hf, load_model
from flashspec.models.native import NativeLlama


def checks(bench: Bench) -> list[dict]:
    """Our logits against Hugging Face's forward, and the captured step against our eager forward."""
    rows = []
    for shape in bench.shapes():
        graph = bench.model(shape)
        hf, prompt = bench.hf[shape], bench.prompt(shape, 64).to(DEVICE)
        eager = NativeLlama(hf, CONTEXT)
        with torch.inference_mode():
            reference = hf(prompt[None]).logits[0].float()
        rows.append(compare(shape, "prefill: native eager vs HF forward", eager.forward(prompt).logits, reference))
        graph.reset()
        graph.forward(prompt)
        for k in (1, 9, 17):
            block = prompt_ids(k, hf.config.vocab_size).to(DEVICE)
            eager.crop(64)
            graph.crop(64)
            rows.append(compare(shape, f"decode k={k}: graph vs eager", graph.forward(block).logits,
                                eager.forward(block).logits))
        del eager
    return rows


def flashspec(bench: Bench) -> list[dict]:
    """Our engine on every random-weight shape."""
    return [row for shape in bench.shapes() for row in engine_rows(bench, shape, bench.model(shape))]


def real_smollm2(bench: Bench) -> list[dict]:
    """The converted SmolLM2-135M of --smollm2: our engine, and Hugging Face's static cache + compile."""
    path = bench.args.smollm2
    if path is None:
        log("real SmolLM2 skipped: no --smollm2 folder given")
        return []
    cfg = fs.TargetConfig(model=str(path), device=DEVICE, dtype="bfloat16", max_context=CONTEXT)
    target, _ = load_model(str(path), cfg)
    if not isinstance(target, NativeLlama):
        raise ValueError(f"--smollm2 {path} loads as {type(target).__name__}, not the native Llama path: "
                         "give a Llama-architecture save_pretrained folder")
    bench.hf[REAL_SMOLLM2], bench.native[REAL_SMOLLM2] = load_hf(str(path), cfg)[0], target
    return engine_rows(bench, REAL_SMOLLM2, target) + hf_rows(bench, REAL_SMOLLM2, ["hf_static_compile"])


def hf(bench: Bench) -> list[dict]:
    """Hugging Face's generate on the random-weight shapes (the smoke test keeps the 8B compile out)."""
    shapes = [DRAFT] if bench.quick else bench.shapes()
    return [row for shape in shapes for row in hf_rows(bench, shape, ["hf_eager", "hf_static_compile"])]


def engine_rows(bench: Bench, shape: str, model: NativeLlama) -> list[dict]:
    rows, engine = [], make_engine(model, bench.tokenizer)
    for n in PROMPT_LENS:
        prompt = bench.prompt(shape, n)
        t0 = time.perf_counter()
        engine.generate(prompt, bench.new)  # compiles the layer and captures the graph
        warm = time.perf_counter() - t0
        result = engine.generate(prompt, bench.new)
        bench.ours[(shape, n)] = result.token_ids
        rows.append(ar_row(bench, shape, n, "flashspec", decode_rate(result), result.new_tokens, warm,
                           ttft_ms=result.ttft_s * 1e3))
    syncs = count_syncs(lambda: engine.generate(bench.prompt(shape, 64), 32))
    rows[-1]["syncs_per_32_tokens"] = syncs  # the prefill's + one per chunk of steps (4, 8, 16, 3: engine.AR_CHUNK)
    return rows


def hf_rows(bench: Bench, shape: str, impls: list[str]) -> list[dict]:
    rows, model = [], bench.hf[shape]
    eager_new = 16 if bench.quick else bench.args.hf_eager_tokens
    static = {"cache_implementation": "static"}  # generate then compiles the decoding step
    # (kwargs, new tokens, seconds needed): the first H200 run compiled the 8B and 1B steps in 25 s each
    runs = {"hf_eager": ({}, eager_new, 40), "hf_static_compile": (static, bench.new, 60)}
    for impl in impls:
        kwargs, new, need = runs[impl]
        if not bench.enough(need, f"{impl} {shape}"):
            continue
        t0 = time.perf_counter()
        hf_generate(model, bench.prompt(shape, PROMPT_LENS[0]), new if kwargs else 4, **kwargs)
        warm = time.perf_counter() - t0
        for n in PROMPT_LENS:
            first = hf_generate(model, bench.prompt(shape, n), 1, **kwargs)[1]
            tokens, seconds = hf_generate(model, bench.prompt(shape, n), new, **kwargs)
            same = tokens == bench.ours.get((shape, n), [])[:new]
            rows.append(ar_row(bench, shape, n, impl, (new - 1) / (seconds - first), new, warm,
                               ttft_ms=first * 1e3, matches_flashspec=same,
                               compiled=hasattr(model, "_compiled_call")))
        log(f"{impl} {shape}: {rows[-2:]}")
    return rows


def ar_row(bench: Bench, shape: str, prompt: int, impl: str, rate: float, new: int, warm_s: float, **extra):
    roofline = bench.env["copy_bandwidth_gbs"] * 1e9 / weight_bytes(bench.hf[shape])
    return dict(shape=shape, prompt_tokens=prompt, impl=impl, tok_s=rate, roofline_tok_s=roofline,
                frac_roofline=rate / roofline, new_tokens=new, warmup_s=warm_s, **extra)


def compare(shape: str, what: str, ours: torch.Tensor, reference: torch.Tensor) -> dict:
    ours, reference = ours.float(), reference.float()
    return dict(shape=shape, check=what, rel_err=float((ours - reference).norm() / reference.norm()),
                argmax_agree=float((ours.argmax(-1) == reference.argmax(-1)).float().mean()))


@torch.inference_mode()
def hf_generate(model, prompt: torch.Tensor, new: int, **kwargs) -> tuple[list[int], float]:
    ids = prompt[None].to(DEVICE)
    eos = model.config.eos_token_id
    sync()
    t0 = time.perf_counter()
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                         do_sample=False, pad_token_id=eos[0] if isinstance(eos, list) else eos, **kwargs)
    sync()
    return out[0, ids.shape[1]:].tolist(), time.perf_counter() - t0
