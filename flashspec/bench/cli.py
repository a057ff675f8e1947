"""The bench's command line and its run: sections in order of importance, each CSV written as its step ends.

A step that would not finish before --deadline-s is skipped and logged, and a failing step is recorded in
env.json without stopping the others, so a run always ends with what it measured (then summary.md).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
import traceback
from importlib import metadata
from pathlib import Path

import torch

from flashspec.bench import ar, family, gemv, harness, latency, report, speculative, verifier
from flashspec.bench.context import START, Bench, log
from flashspec.bench.measure import copy_bandwidth, watch_triton

PACKAGES = ("torch", "transformers", "triton", "tokenizers", "numpy", "pandas")
SECTIONS = "abcdeh"
STEPS = (  # (sections, seconds needed, CSV, step): most wanted first
    ("a", 0, "checks", ar.checks), ("a", 0, "ar", ar.flashspec), ("a", 60, "ar", ar.real_smollm2),
    # h, d and b's timings before b's profile: the profiler leaves CUPTI attached, which slows every later launch
    ("h", 60, "harness", harness.harness), ("d", 60, "verifier", verifier.verifier),
    ("b", 0, "latency", latency.latency), ("b", 30, "profile", latency.profile),
    ("b", 40, "gemv", gemv.gemv), ("b", 90, "variants", latency.variants),  # device-bound: little slowed by CUPTI
    ("c", 60, "speculative", speculative.speculative), ("a", 60, "ar", ar.hf), ("e", 60, "family", family.family),
)


def run(bench: Bench, wanted: set[str]) -> None:
    bench.env = environment(bench)
    bench.env["errors"] = {}
    watch_triton()
    done: dict[str, list[dict]] = {}
    for sections, need, name, step in STEPS:
        what = f"{step.__module__.rsplit('.', 1)[-1]}.{step.__name__}"
        if not wanted & set(sections) or not bench.enough(need, what):
            continue
        try:
            rows = step(bench)
        except Exception as err:  # one broken step must not cost the others their numbers
            log(f"FAILED {what}: {traceback.format_exc()}")
            bench.env["errors"][what] = repr(err)
            continue
        done[name] = done.get(name, []) + (rows or [])
        if done[name]:
            bench.save(done[name], name)
    bench.env["skipped"] = bench.skipped
    bench.env["seconds"] = time.perf_counter() - START
    (bench.out / "env.json").write_text(json.dumps(bench.env, indent=2) + "\n")
    report.report(bench.out)
    log("done")


def environment(bench: Bench) -> dict:
    props = torch.cuda.get_device_properties(0)
    env = {
        "device": torch.cuda.get_device_name(0), "sm_count": props.multi_processor_count,
        "memory_gib": round(props.total_memory / 2**30, 1), "cuda": torch.version.cuda,
        "python": platform.python_version(), "commit": bench.args.commit or git_commit(),
        "packages": {p: package_version(p) for p in PACKAGES}, "command": " ".join(sys.argv),
        "quick": bench.quick, "new_tokens": bench.new,
    }
    env["copy_bandwidth_gbs"] = copy_bandwidth() / 1e9
    log(f"environment: {env}")
    return env


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no git here: pass --commit)"


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def parser() -> argparse.ArgumentParser:
    from flashspec import bench

    p = argparse.ArgumentParser(prog="bench_gpu.py", description=bench.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("results/gpu"), help="CSVs, figures, env.json, summary.md")
    p.add_argument("--quick", action="store_true", help="a smoke test of about 3 minutes: fewer points and tokens")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--deadline-s", type=float, help="skip steps that would end after this (default 500, quick 180)")
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--hf-eager-tokens", type=int, default=128, help="eager generate is slow: fewer")
    p.add_argument("--smollm2", type=Path, help="a converted SmolLM2-135M (save_pretrained folder) for a and h")
    p.add_argument("--harness-model", type=Path, help="the model section h runs through run.py (default --smollm2)")
    p.add_argument("--harness-prompts", type=int, default=5, help="prompts section h decodes (after 3 warm-ups)")
    p.add_argument("--models-dir", type=Path, default=Path("results/models"))
    p.add_argument("--data-dir", type=Path, default=Path("flashspec/data"))  # the packaged prompt sets
    p.add_argument("--family-prompts", type=int, default=10, help="prompts per dataset in section e")
    p.add_argument("--family-tokens", type=int, default=128)
    p.add_argument("--commit", default="", help="the commit measured (default: git rev-parse HEAD)")
    p.add_argument("--report-only", type=Path, help="redo figures and summary.md from a folder's CSVs")
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.report_only:
        report.report(args.report_only)
        return
    if args.deadline_s is None:
        args.deadline_s = 180 if args.quick else 500
    wanted = set(args.sections.split(","))
    if wanted - set(SECTIONS):
        raise ValueError(f"--sections has {sorted(wanted - set(SECTIONS))}: use a comma-separated subset of "
                         f"{','.join(SECTIONS)}")
    for flag in ("smollm2", "harness_model"):
        path = getattr(args, flag)
        if path is not None and not (path / "config.json").is_file():
            raise ValueError(f"--{flag.replace('_', '-')} {path}: no config.json there; give a save_pretrained folder")
    if not torch.cuda.is_available():
        raise ValueError("the GPU bench times CUDA graphs and kernels: run it on a machine with a CUDA GPU")
    # Each model here compiles its layer twice (one token, any other count): more than dynamo's default 8.
    torch._dynamo.config.cache_size_limit = 64
    run(Bench(args), wanted)
