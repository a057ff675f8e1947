"""What a run decodes with: flashspec's engine, or as outside baselines transformers' `generate` or the
Medusa / EAGLE authors' own code (run in their environment by official_worker.py).

All return a `GenerationResult`; the baselines report no steps, arms or trace (steps=0 marks that), so their
tau and alpha stay empty in the CSV. The autoregressive baseline's engine is kept per process, keyed by
config, so a sweep loads it once, and its timing of each prompt is measured once and reused.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import asdict
from pathlib import Path

import torch
from transformers import AutoTokenizer

from flashspec.config import FlashSpecConfig, SamplingConfig
from flashspec.drafters.shared_head import hf_model, is_shared_head
from flashspec.engine import SpeculativeEngine, eos_token_ids
from flashspec.harness.schema import RunConfig, baseline_config, engine_config, gammas
from flashspec.metrics import GenerationResult
from flashspec.models import load_hf, resolve_name

BASELINE_ENGINE: dict[str, SpeculativeEngine] = {}
BASELINE_RESULTS: dict[tuple, GenerationResult] = {}


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class FlashSpecDecoder:
    def __init__(self, cfg: RunConfig) -> None:
        self.engine = SpeculativeEngine(engine_config(cfg))  # fresh: bandit state must not leak between runs
        self.tokenizer, self.device = self.engine.tokenizer, cfg.target.device

    def generate(self, ids: list[int], max_new_tokens: int) -> GenerationResult:
        out = self.engine.generate(ids, max_new_tokens=max_new_tokens)
        synchronize(self.device)
        return out

    def forget(self) -> None:
        """Drop what the warm-up taught the bandit (state that bandit.scope=run carries across requests)."""
        if self.engine.selector is not None:
            self.engine.selector.reset()
        self.engine.best_rate = 0.0


class HFDecoder:
    def __init__(self, cfg: RunConfig) -> None:
        self.model, self.tokenizer = load_hf(cfg.target.model, cfg.target)
        self.kwargs = hf_kwargs(cfg, self.tokenizer, self.model)
        self.eos = eos_token_ids(self.tokenizer, self.model)
        self.device, self.seed = cfg.target.device, cfg.sampling.seed

    def generate(self, ids: list[int], max_new_tokens: int) -> GenerationResult:
        torch.manual_seed(self.seed)
        inputs = torch.tensor([ids], device=self.model.device)
        synchronize(self.device)
        start = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(
                inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=max_new_tokens, **self.kwargs
            )
        synchronize(self.device)
        seconds = time.perf_counter() - start
        new = out[0, len(ids):].tolist()
        ends = [i for i, t in enumerate(new) if t in self.eos]
        new = new[: ends[0] + 1] if ends else new  # what follows an EOS is padding
        return GenerationResult(
            text=self.tokenizer.decode(new, skip_special_tokens=True), token_ids=new, prompt_tokens=len(ids),
            steps=0, arms={}, trace=[], wall_time_s=seconds, ttft_s=float("nan"),
        )

    def forget(self) -> None:
        """`generate` keeps nothing between calls (the assistant's length schedule is constant)."""


def hf_kwargs(cfg: RunConfig, tokenizer, model) -> dict:
    """`generate` arguments matching the run's sampling, cache and drafter settings."""
    s: SamplingConfig = cfg.sampling
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    kwargs: dict = {"do_sample": not s.greedy, "pad_token_id": pad}
    if not s.greedy:
        kwargs |= {"temperature": s.temperature, "top_k": s.top_k, "top_p": s.top_p}
    if cfg.method.cache_implementation:
        # One static cache for the whole run, sized as the engine's context: transformers otherwise sizes it to
        # each call's prompt + max_new_tokens and, when a later prompt needs more (an MT-Bench second turn),
        # allocates a larger one, on which the auto-compiled decoding step (torch.compile, CUDA graphs)
        # recompiles inside the timed call: 42.7 s for one 541-token prompt on the H200 (results/gpu/smollm2).
        kwargs |= {"cache_implementation": cfg.method.cache_implementation, "max_cache_len": cfg.target.max_context}
    if cfg.method.assistant:
        # A shared-head draft (flashspec/drafters/shared_head.py) becomes a whole model on the target's tensors.
        if is_shared_head(cfg.draft_model):
            kwargs["assistant_model"] = hf_model(cfg.draft_model, model)
        else:
            kwargs["assistant_model"], _ = load_hf(cfg.draft_model, cfg.target)
        kwargs |= {"num_assistant_tokens": gammas(cfg)[0], "num_assistant_tokens_schedule": "constant"}
    if cfg.method.prompt_lookup:
        kwargs["prompt_lookup_num_tokens"] = gammas(cfg)[0]
    return kwargs


class OfficialDecoder:
    """The authors' eagenerate / medusa_generate (greedy) in a worker process under `method.python`."""

    def __init__(self, cfg: RunConfig) -> None:
        target, drafter = resolve_name(cfg.target.model), resolve_name(cfg.method.drafter)
        self.tokenizer = AutoTokenizer.from_pretrained(target)
        worker = Path(__file__).with_name("official_worker.py")
        command = [cfg.method.python, str(worker), "--code", cfg.method.official, "--target", target, "--drafter",
                   drafter, "--device", cfg.target.device, "--dtype", cfg.target.dtype,
                   "--args", json.dumps(cfg.method.official_args)]
        self.worker = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.method = cfg.method.name
        self._reply()  # their model is loaded

    def _reply(self) -> dict:
        line = self.worker.stdout.readline()
        if not line:
            raise RuntimeError(f"method={self.method}: the authors' code stopped (its error is above): see "
                               "docs/baselines.md for the environment it needs")
        return json.loads(line)

    def generate(self, ids: list[int], max_new_tokens: int) -> GenerationResult:
        self.worker.stdin.write(json.dumps({"ids": ids, "max_new_tokens": max_new_tokens}) + "\n")
        self.worker.stdin.flush()
        reply = self._reply()
        return GenerationResult(
            text=self.tokenizer.decode(reply["ids"], skip_special_tokens=True), token_ids=reply["ids"],
            prompt_tokens=len(ids), steps=0, arms={}, trace=[], wall_time_s=reply["seconds"],
            ttft_s=float("nan"),
        )

    def forget(self) -> None:
        """Their generate calls keep nothing that changes what is measured."""

    def __del__(self) -> None:
        if getattr(self, "worker", None) is not None and self.worker.poll() is None:
            self.worker.stdin.close()
            self.worker.wait(timeout=60)


Decoder = FlashSpecDecoder | HFDecoder | OfficialDecoder


def decoder(cfg: RunConfig) -> Decoder:
    if cfg.method.backend == "official":
        return OfficialDecoder(cfg)
    return HFDecoder(cfg) if cfg.method.backend == "hf_generate" else FlashSpecDecoder(cfg)


def baseline_engine(config: FlashSpecConfig) -> SpeculativeEngine:
    """Kept across the runs of a sweep (it holds no bandit state); one loaded at a time."""
    key = json.dumps(asdict(config), sort_keys=True)
    if key not in BASELINE_ENGINE:
        BASELINE_ENGINE.clear()
        BASELINE_ENGINE[key] = SpeculativeEngine(config)
    return BASELINE_ENGINE[key]


def baseline(cfg: RunConfig, ids: list[int], max_new_tokens: int, cached: bool = True) -> GenerationResult:
    """Plain autoregressive decoding of the ids with the run's target and sampling, timed once per process
    (`cached=False`, for warm-ups, runs it again and keeps nothing)."""
    config = baseline_config(cfg)
    key = (json.dumps(asdict(config), sort_keys=True), max_new_tokens, tuple(ids))
    if key in BASELINE_RESULTS and cached:
        return BASELINE_RESULTS[key]
    out = baseline_engine(config).generate(ids, max_new_tokens=max_new_tokens)
    synchronize(cfg.target.device)
    if cached:
        BASELINE_RESULTS[key] = out
    return out
