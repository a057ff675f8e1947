"""What a run decodes with: flashspec's engine, or transformers' `generate` as an outside baseline.

Both return a `GenerationResult`; `generate` reports no steps, arms or trace (steps=0 marks that), so its
tau and alpha stay empty in the CSV. Built engines are kept per process, keyed by config, so the
autoregressive baseline of a sweep loads once and its timings are cached per prompt.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict

import torch
from transformers import PreTrainedTokenizerBase

from flashspec.config import FlashSpecConfig, SamplingConfig
from flashspec.engine import SpeculativeEngine, eos_token_ids
from flashspec.harness.schema import RunConfig, baseline_config, engine_config, gammas
from flashspec.metrics import GenerationResult
from flashspec.models import load_hf

Generate = Callable[[list[int], int], GenerationResult]  # (prompt ids, max_new_tokens) -> result

BASELINE_ENGINE: dict[str, SpeculativeEngine] = {}
BASELINE_RESULTS: dict[tuple, GenerationResult] = {}


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def baseline_engine(config: FlashSpecConfig) -> SpeculativeEngine:
    """Kept across the runs of a sweep (it holds no bandit state); one loaded at a time."""
    key = json.dumps(asdict(config), sort_keys=True)
    if key not in BASELINE_ENGINE:
        BASELINE_ENGINE.clear()
        BASELINE_ENGINE[key] = SpeculativeEngine(config)
    return BASELINE_ENGINE[key]


def flashspec_decoder(cfg: RunConfig) -> tuple[Generate, PreTrainedTokenizerBase]:
    eng = SpeculativeEngine(engine_config(cfg))  # fresh: bandit state must not leak between runs

    def generate(ids: list[int], max_new_tokens: int) -> GenerationResult:
        out = eng.generate(ids, max_new_tokens=max_new_tokens)
        synchronize(cfg.target.device)
        return out

    return generate, eng.tokenizer


def hf_decoder(cfg: RunConfig) -> tuple[Generate, PreTrainedTokenizerBase]:
    model, tokenizer = load_hf(cfg.target.model, cfg.target)
    kwargs = hf_kwargs(cfg, tokenizer, model)
    eos = eos_token_ids(tokenizer, model)

    def generate(ids: list[int], max_new_tokens: int) -> GenerationResult:
        torch.manual_seed(cfg.sampling.seed)
        inputs = torch.tensor([ids], device=model.device)
        synchronize(cfg.target.device)
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=max_new_tokens, **kwargs
            )
        synchronize(cfg.target.device)
        seconds = time.perf_counter() - start
        new = out[0, len(ids):].tolist()
        ends = [i for i, t in enumerate(new) if t in eos]
        new = new[: ends[0] + 1] if ends else new  # generate pads after EOS only in batches; be safe
        return GenerationResult(
            text=tokenizer.decode(new, skip_special_tokens=True), token_ids=new, prompt_tokens=len(ids),
            steps=0, arms={}, trace=[], wall_time_s=seconds, ttft_s=float("nan"),
        )

    return generate, tokenizer


def hf_kwargs(cfg: RunConfig, tokenizer: PreTrainedTokenizerBase, model) -> dict:
    """`generate` arguments matching the run's sampling, cache and drafter settings."""
    s: SamplingConfig = cfg.sampling
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    kwargs: dict = {"do_sample": not s.greedy, "pad_token_id": pad}
    if not s.greedy:
        kwargs |= {"temperature": s.temperature, "top_k": s.top_k, "top_p": s.top_p}
    if cfg.method.cache_implementation:
        kwargs["cache_implementation"] = cfg.method.cache_implementation
    if cfg.method.assistant:
        kwargs["assistant_model"], _ = load_hf(cfg.draft_model, cfg.target)
        kwargs |= {"num_assistant_tokens": gammas(cfg)[0], "num_assistant_tokens_schedule": "constant"}
    if cfg.method.prompt_lookup:
        kwargs["prompt_lookup_num_tokens"] = gammas(cfg)[0]
    return kwargs


def decoder(cfg: RunConfig) -> tuple[Generate, PreTrainedTokenizerBase]:
    return hf_decoder(cfg) if cfg.method.backend == "hf_generate" else flashspec_decoder(cfg)


def baseline(cfg: RunConfig, ids: list[int], max_new_tokens: int) -> GenerationResult:
    """Plain autoregressive decoding of the ids with the run's target and sampling; timed once per process."""
    config = baseline_config(cfg)
    key = (json.dumps(asdict(config), sort_keys=True), max_new_tokens, tuple(ids))
    if key not in BASELINE_RESULTS:
        BASELINE_RESULTS[key] = baseline_engine(config).generate(ids, max_new_tokens=max_new_tokens)
        synchronize(cfg.target.device)
    return BASELINE_RESULTS[key]
