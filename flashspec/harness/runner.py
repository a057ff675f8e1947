"""One measurement run: decode every prompt (and turn), time the autoregressive baseline, write the tables."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import subprocess
import time
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from flashspec.harness import decoders, store
from flashspec.harness.analysis import summarize
from flashspec.harness.data import PROJECT_ROOT, Prompt, completion_source, encode, load_prompts
from flashspec.harness.schema import (
    RunConfig,
    baseline_config,
    check,
    check_keys,
    check_machine,
    config_hash,
    gammas,
    not_in_sweep,
    uses_gamma,
)
from flashspec.metrics import GenerationResult
from flashspec.models import source_record
from flashspec.quality import humaneval

log = logging.getLogger(__name__)
PACKAGES = ("flashspec", "torch", "transformers", "triton", "hydra-core", "omegaconf", "pandas")


COMMIT_ENV = "FLASHSPEC_COMMIT"


def git_commit() -> str | None:
    """The commit measured: $FLASHSPEC_COMMIT when set (a copy of the repository whose .git is stale or absent,
    as on a lent GPU machine: scripts/gpu_session.sh exports it), else git's HEAD, "-dirty" with local changes."""
    if commit := os.environ.get(COMMIT_ENV, "").strip():
        return commit
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                             timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (out.stdout.strip() + ("-dirty" if dirty else "")) if out.returncode == 0 else None


def versions() -> dict[str, str | None]:
    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {name: version(name) for name in PACKAGES} | {"python": platform.python_version()}


def device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def set_threads(cfg: RunConfig) -> int:
    """CPU runs: `cfg.threads`, else OMP_NUM_THREADS when set, else 1 (schema.RunConfig.threads says why)."""
    if cfg.target.device == "cpu":
        env = os.environ.get("OMP_NUM_THREADS", "")
        torch.set_num_threads(cfg.threads or (int(env) if env.isdigit() and int(env) > 0 else 1))
    return torch.get_num_threads()


def run_info(cfg: RunConfig, run_id: str) -> dict:
    return {
        "run_id": run_id, "config_hash": config_hash(cfg), "seed": cfg.sampling.seed,
        "threads": torch.get_num_threads(),
        "versions": versions(), "git_commit": git_commit(), "device": device_name(cfg.target.device),
        "target_source": source_record(cfg.target.model),  # a converted model's package, version, hashes
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),  # per worker under a GPU pool
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def run_columns(cfg: RunConfig, run_id: str) -> dict:
    """The columns shared by all rows of a run; settings the run does not read stay empty."""
    spec, ours = uses_gamma(cfg), cfg.method.backend == "flashspec"
    learns = ours and cfg.bandit.policy not in ("none", "fixed")
    return {
        "run_id": run_id, "config_hash": config_hash(cfg), "method": cfg.method.name,
        "target": cfg.target.model, "arm_set": cfg.arms.name if spec and ours else None,
        "bandit": cfg.bandit.policy if ours else None,
        "bandit_scope": cfg.bandit.scope if learns else None,
        "bandit_reward": cfg.bandit.reward if learns else None,  # cost_model: deterministic arm choices
        "gamma": "+".join(map(str, gammas(cfg))) if spec else None,
        "temperature": cfg.sampling.temperature, "top_k": cfg.sampling.top_k, "top_p": cfg.sampling.top_p,
        "seed": cfg.sampling.seed, "max_new_tokens": cfg.max_new_tokens, "dataset": cfg.dataset.name,
    }


def result_row(cfg: RunConfig, out: GenerationResult, base: GenerationResult | None) -> dict:
    measured = out.steps > 0  # transformers' generate reports no steps
    base_rate = base.tokens_per_s if base else math.nan
    fixed = cfg.method.backend == "flashspec" and cfg.bandit.policy == "fixed"
    return {
        "fixed_arm": list(out.arms)[cfg.bandit.arm] if fixed else None,  # the engine's name for that arm
        "prompt_tokens": out.prompt_tokens, "new_tokens": out.new_tokens,
        "steps": out.steps if measured else None, "tau": out.tau if measured else math.nan,
        "alpha": out.alpha, "wall_time_s": out.wall_time_s, "ttft_s": out.ttft_s,
        "tokens_per_s": out.tokens_per_s,
        "baseline_new_tokens": base.new_tokens if base else None,
        "baseline_wall_time_s": base.wall_time_s if base else math.nan,
        "baseline_tokens_per_s": base_rate, "speedup": out.tokens_per_s / base_rate,
        # Under greedy decoding a lossless method reproduces the baseline's tokens exactly.
        "matches_baseline": out.token_ids == base.token_ids if base else None,
        "output_hash": output_hash(out.token_ids),
    }


def output_hash(ids: list[int]) -> str:
    """A short digest of the new tokens: rows of different runs on the same prompt compare by it (a baseline
    other than the engine's, e.g. transformers' greedy for its speculative modes, lives in another run)."""
    return hashlib.sha1(",".join(map(str, ids)).encode()).hexdigest()[:16]


def passed(prompt: Prompt, messages: list[dict], out: GenerationResult) -> bool | None:
    """HumanEval: whether the answer passes the problem's tests, run in a sandboxed subprocess; else empty."""
    if prompt.test is None:
        return None
    return humaneval.check(completion_source(messages), out.text, prompt.test, prompt.entry_point or "").passed


def arm_rows(out: GenerationResult) -> list[dict]:
    return [{"arm": name, **asdict(stats)} for name, stats in out.arms.items()]


def trace_rows(out: GenerationResult) -> list[dict]:
    names = list(out.arms)  # the engine's arm order, which the trace indexes
    steps = enumerate(zip(out.trace, out.emitted, strict=True), 1)
    return [{"step": i, "arm": names[k], "emitted": n} for i, (k, n) in steps] if names else []


COLUMNS = {
    "results": [
        "run_id", "config_hash", "method", "target", "arm_set", "bandit", "bandit_scope", "bandit_reward", "gamma",
        "temperature", "top_k", "top_p", "seed", "max_new_tokens", "dataset", "category", "prompt_id", "turn",
        "fixed_arm", "prompt_tokens", "new_tokens", "steps", "tau", "alpha", "wall_time_s", "ttft_s", "tokens_per_s",
        "baseline_new_tokens", "baseline_wall_time_s", "baseline_tokens_per_s", "speedup", "matches_baseline",
        "output_hash", "passed",
    ],
    "arms": ["run_id", "prompt_id", "turn", "arm", "pulls", "drafted", "accepted"],
    "trace": ["run_id", "prompt_id", "turn", "step", "arm", "emitted"],
}


def warm_up(cfg: RunConfig, dec: decoders.Decoder, prompts: list[Prompt]) -> None:
    """Untimed generations on the first `cfg.warmup` prompts, so one-off costs (allocation, kernel selection,
    compilation for new shapes, CUDA-graph capture) miss the measured ones; the bandit then forgets them."""
    for prompt in tqdm(prompts[: cfg.warmup], desc="warm-up", unit="prompt", disable=not cfg.progress):
        ids = encode(dec.tokenizer, [{"role": "user", "content": prompt.turns[0]}], cfg.dataset.chat)
        dec.generate(ids, cfg.max_new_tokens)
        if cfg.baseline:
            decoders.baseline(cfg, ids, cfg.max_new_tokens, cached=False)
    dec.forget()


def decode_all(cfg: RunConfig, prompts: list[Prompt], run_id: str) -> dict[str, pd.DataFrame]:
    dec = decoders.decoder(cfg)
    if cfg.baseline:  # loaded before the progress bars start: its loading bars would cut into them
        decoders.baseline_engine(baseline_config(cfg))
    warm_up(cfg, dec, prompts)
    shared = run_columns(cfg, run_id)
    tables: dict[str, list[dict]] = {name: [] for name in store.TABLES}
    for prompt in tqdm(prompts, desc=f"{run_id} {cfg.dataset.name}", unit="prompt", disable=not cfg.progress):
        messages: list[dict] = []
        for turn, text in enumerate(prompt.turns, 1):
            messages.append({"role": "user", "content": text})
            ids = encode(dec.tokenizer, messages, cfg.dataset.chat)
            out = dec.generate(ids, cfg.max_new_tokens)
            base = decoders.baseline(cfg, ids, cfg.max_new_tokens) if cfg.baseline else None
            key = {"run_id": run_id, "prompt_id": prompt.id, "turn": turn}
            about = {"category": prompt.category, "prompt_id": prompt.id, "turn": turn}
            quality = {"passed": passed(prompt, messages, out)}
            result = shared | about | result_row(cfg, out, base) | quality
            log.debug("%s turn %d: %d new tokens, tau %.2f, %.1f tok/s, speedup %.2f", prompt.id, turn,
                      result["new_tokens"], result["tau"], result["tokens_per_s"], result["speedup"])
            tables["results"].append(result)
            tables["arms"] += [key | row for row in arm_rows(out)]
            tables["trace"] += [key | row for row in trace_rows(out)]
            # The next turn follows the model's own answer, as MT-Bench asks.
            messages.append({"role": "assistant", "content": out.text})
    return {name: pd.DataFrame(rows, columns=COLUMNS[name]) for name, rows in tables.items()}


def run(cfg: RunConfig, info: dict, run_dir: Path, root: Path) -> pd.DataFrame | None:
    """Run `cfg` into `run_dir` unless a complete run with its hash is already under `root`, or it is a sweep's
    job that measures nothing of its own."""
    if root != run_dir and (reason := not_in_sweep(cfg)):
        log.info(f"skipping: {reason}")
        return None
    check(cfg)
    check_machine(cfg)
    digest = config_hash(cfg)
    finished = store.completed_runs(root)
    if digest in finished:
        log.info(f"skipping: the same settings ({digest}) already completed in {finished[digest]}")
        if not store.sweep_current(root):  # the previous launch died between a run's end and the rebuild
            store.rebuild_sweep(root)
        return None
    prompts = load_prompts(cfg.dataset, cfg.data_dir)  # bad data fails here, before any file is written
    run_dir.mkdir(parents=True, exist_ok=True)
    store.clear_done(run_dir)
    set_threads(cfg)
    info |= run_info(cfg, run_dir.name)
    store.write_atomic(run_dir / "run.json", json.dumps(info, indent=2))
    log.info(f"writing to {run_dir} ({len(prompts)} prompts of {cfg.dataset.name}, {cfg.target.model} on "
             f"{info['device']})")
    torch.backends.cuda.enable_cudnn_sdp(cfg.cudnn_sdpa)  # process-wide, and the same for every method
    tables = decode_all(cfg, prompts, run_dir.name)
    info["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    store.write_atomic(run_dir / "run.json", json.dumps(info, indent=2))
    store.save_run(run_dir, digest, tables)
    store.rebuild_sweep(root)
    return tables["results"]


def main(cfg: DictConfig, run_dir: Path, root: Path, choices: dict | None = None) -> None:
    """`choices`: the config group options picked (Hydra's runtime.choices), recorded in run.json."""
    check_keys(cfg)
    info = {"config": OmegaConf.to_container(cfg, resolve=True), "choices": choices or {}}
    typed: RunConfig = OmegaConf.to_object(cfg)  # also runs the dataclasses' own checks
    results = run(typed, info, run_dir, root)
    if results is not None:
        log.info(summary_text(results, root))
        if root != run_dir:
            log.info(f"this run's files: {run_dir}")


SUMMARY_KEYS = ["method", "bandit", "bandit_scope", "fixed_arm", "arm_set", "gamma", "dataset"]
# The baseline's time per new token depends little on the prompt (prefill aside): its spread across prompts is
# mostly the machine's timing noise. Above this coefficient of variation, per-prompt speedups are not to be
# trusted.
NOISY_CV = 0.25


def timing_noise(results: pd.DataFrame) -> float:
    """Coefficient of variation of the autoregressive baseline's seconds per token across the rows."""
    per_token = (results["baseline_wall_time_s"] / results["baseline_new_tokens"]).dropna()
    return float(per_token.std() / per_token.mean()) if len(per_token) > 1 else math.nan


def summary_text(results: pd.DataFrame, root: Path) -> str:
    table = summarize(results, SUMMARY_KEYS).dropna(axis=1, how="all")  # e.g. fixed_arm when none is fixed
    text = f"\n{rounded(table).to_string(index=False)}\n"
    text += ("\ntok/s and speedup: total new tokens over total time; AR tok/s: autoregressive decoding of the same "
             "prompts, timed once per prompt in this process (a sweep's later runs reuse it)\n")
    noise = timing_noise(results)
    if noise > NOISY_CV:
        text += (f"warning: timings too noisy to trust: the autoregressive baseline's time per new token varies "
                 f"by {noise:.0%} across prompts (coefficient of variation, over {NOISY_CV:.0%}: a busy machine, "
                 "or prompts of very different lengths); measure on an idle machine, or with more prompts\n")
    return text + f"\nresults: {root} (results.csv, arms.csv, trace.csv; run.json and run.log per run)"


def rounded(table: pd.DataFrame) -> pd.DataFrame:
    """Three significant digits (timings on a shared machine mean no more), never scientific notation."""
    def fmt(value: float) -> str:
        if pd.isna(value) or value == 0:
            return str(value)
        return f"{value:.{max(0, 2 - math.floor(math.log10(abs(value))))}f}"

    floats = table.select_dtypes("float").columns
    return table.astype({c: object for c in floats}).assign(**{c: table[c].map(fmt) for c in floats})
