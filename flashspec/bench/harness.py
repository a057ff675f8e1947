"""Section h: the research harness (`run.py`, in-process through its own API) decoding a real model
autoregressively with hardware=cuda, as a researcher runs it.

The harness's tok/s divides all new tokens by the whole wall time, prefill included; its short runs are then
dominated by the (eager) prefill. This section reports decode tok/s (after the first token) and the time to
first token separately, so summary.md can set the harness's decode rate against the engine's own on the same
model and device and against Hugging Face's static cache + compile. The engine's own rate is timed here, right
after the harness, on the harness's model and cache size (section a times the bench's 1344 positions, and the
profiling of section b may slow later launches: CUPTI stays attached, pytorch/pytorch#144455).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pandas as pd
import torch
from omegaconf import OmegaConf

from flashspec.bench.context import Bench, log
from flashspec.bench.measure import decode_rate
from flashspec.bench.shapes import make_engine, prompt_ids
from flashspec.config import TargetConfig
from flashspec.models import load_model

HARNESS_FLOOR = 0.8  # the harness's decode rate under this fraction of the engine's own is a failure

PROMPTS = (  # used when --data-dir holds no mt_bench.jsonl
    "Explain how a hash map handles collisions, with a short example.",
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "What are the main differences between TCP and UDP? Give three use cases for each.",
    "Summarise the causes of the French Revolution in a few paragraphs.",
    "Describe how to bake sourdough bread, step by step.",
)


def harness(bench: Bench) -> list[dict]:
    from flashspec.harness import runner, schema  # Hydra is only needed here

    model = bench.args.harness_model or bench.args.smollm2
    if model is None:
        log("section h skipped: no --harness-model (or --smollm2) folder given")
        return []
    limit = 2 if bench.quick else bench.args.harness_prompts
    with tempfile.TemporaryDirectory() as tmp:
        overrides = ["target=hf", f"target.model={Path(model).resolve()}", "hardware=cuda", "bandit=none",
                     "baseline=false", f"max_new_tokens={bench.new}", "progress=false",
                     *dataset_overrides(bench.args.data_dir, Path(tmp), limit)]
        cfg = OmegaConf.to_object(schema.compose(*overrides))
        cudnn = torch.backends.cuda.cudnn_sdp_enabled()
        try:  # the harness switches cuDNN attention process-wide: the later sections keep this process's choice
            results = runner.run(cfg, {}, Path(tmp) / "run", Path(tmp))
        finally:
            torch.backends.cuda.enable_cudnn_sdp(cudnn)
    decode, engine = decode_tok_s(results), engine_decode_tok_s(cfg.target, bench.new)
    if decode < HARNESS_FLOOR * engine:
        log(f"FAILED harness check: run.py decodes at {decode:.0f} tok/s, under {HARNESS_FLOOR:.0%} of the engine's "
            f"{engine:.0f} tok/s on the same model and cache size, in the same process")
    return [dict(model=str(model), dataset=cfg.dataset.name, rows=len(results),
                 mean_new_tokens=results["new_tokens"].mean(), max_context=cfg.target.max_context,
                 tok_s=results["tokens_per_s"].mean(), decode_tok_s=decode, engine_decode_tok_s=engine,
                 harness_over_engine=decode / engine, ttft_ms=results["ttft_s"].median() * 1e3,
                 overrides=" ".join(overrides[:1] + overrides[2:7]))]


def decode_tok_s(results: pd.DataFrame) -> float:
    """A run's decode rate: new tokens after the first over the time after the first (the prefill excluded)."""
    return (results["new_tokens"] - 1).sum() / (results["wall_time_s"] - results["ttft_s"]).sum()


def engine_decode_tok_s(target: TargetConfig, new: int) -> float:
    """The engine's own AR decode rate (make_engine, as section a times it) on the harness's model and cache
    size, in the same process just after the harness: what the harness must get."""
    model, tokenizer = load_model(target.model, target)
    engine = make_engine(model, tokenizer)
    prompt = prompt_ids(64, model.vocab_size)
    engine.generate(prompt, new)  # captures the graphs (the layer is compiled already: the harness's model)
    return decode_rate(engine.generate(prompt, new))


def dataset_overrides(data_dir: Path, tmp: Path, limit: int) -> list[str]:
    """MT-Bench from --data-dir when it is there (as the issue's runs), else the bench's own few prompts."""
    if (data_dir / "mt_bench.jsonl").is_file():
        return [f"data_dir={data_dir.resolve()}", "dataset=mt_bench", f"dataset.limit={limit}"]
    file = tmp / "prompts.jsonl"
    file.write_text("".join(json.dumps({"id": f"p{i}", "turns": [p]}) + "\n" for i, p in enumerate(PROMPTS)))
    return ["dataset=custom", "dataset.name=bench_prompts", f"dataset.file={file}", f"dataset.limit={limit}"]
