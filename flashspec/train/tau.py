"""A quick tau (mean tokens emitted per decoding step of the target) of freshly trained drafters, measured by the
engine on prompts made from the corpus files the family holds out (never trained on, never a benchmark prompt),
and the record of it: tau.json and tau.md beside the drafters, naming the device."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch

from flashspec import ArmConfig, BanditConfig, FlashSpecConfig, SamplingConfig, SpeculativeEngine
from flashspec.arms import build_arm
from flashspec.config import TargetConfig
from flashspec.models import load_model


def tau(engine: SpeculativeEngine, prompts: list[list[int]], sampling: SamplingConfig, max_new: int) -> float:
    """Tokens emitted per decoding step of the target, over all prompts (seed i for prompt i)."""
    emitted = []
    for i, ids in enumerate(prompts):
        s = SamplingConfig(sampling.temperature, sampling.top_k, sampling.top_p, seed=i)
        emitted += engine.generate(ids, max_new, s).emitted
    return sum(emitted) / max(len(emitted), 1)


def device_name(device: str) -> str:
    return torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else f"cpu ({platform.machine()})"


def measure(target_path: str, arms: dict[str, ArmConfig], prompts: list[list[int]], device: str, gamma: int = 4,
            max_new: int = 64) -> dict:
    """Greedy tau of each arm at `gamma` (tree arms: gamma nodes) over `prompts`. The target decodes eagerly
    (no CUDA graphs, no compile: tau does not depend on the path, and the run stays within its minutes), in
    bfloat16 on CUDA as in the study, float32 elsewhere."""
    dtype = "bfloat16" if torch.device(device).type == "cuda" else "float32"
    context = max(len(p) for p in prompts) + max_new + 2 * gamma + 8
    target_cfg = TargetConfig(model=target_path, device=device, dtype=dtype, max_context=context, cuda_graphs=False)
    target, tokenizer = load_model(target_path, target_cfg)
    cfg = FlashSpecConfig(target=target_cfg, gammas=[gamma], bandit=BanditConfig("fixed"))
    rows = {}
    for name, arm_cfg in arms.items():
        t0 = time.monotonic()
        engine = SpeculativeEngine(cfg, target=target, tokenizer=tokenizer,
                                   arms=[build_arm(arm_cfg, target, tokenizer, target_cfg)])
        rows[name] = {"kind": arm_cfg.kind, "model": arm_cfg.model,
                      "tau_greedy": round(tau(engine, prompts, SamplingConfig(), max_new), 3),
                      "seconds": round(time.monotonic() - t0, 1)}
        print(f"[train_drafters] tau {name}: {rows[name]['tau_greedy']} ({rows[name]['seconds']} s)", flush=True)
    return {"device": device_name(device), "dtype": dtype, "gamma": gamma, "prompts": len(prompts),
            "max_new_tokens": max_new, "arms": rows}


def write_record(out: Path, record: dict) -> None:
    """tau.json (everything) and tau.md (the table results/models/README.md reports) in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "tau.json").write_text(json.dumps(record, indent=2) + "\n")
    t = record["tau"]
    lines = [f"Greedy tau at gamma = {t['gamma']} (tree arms: {t['gamma']} nodes) on {t['prompts']} prompts of the "
             f"corpus files the family holds out, {t['max_new_tokens']} new tokens, {t['device']} ({t['dtype']}); "
             f"made by `{record['command']}` in {record['wall_time_s']} s.", "",
             "| drafter | kind | trained parameters | steps | held-out top-1 agreement | tau greedy |",
             "|---|---|---|---|---|---|"]
    for name, row in t["arms"].items():
        train = record["drafters"].get(name, {})
        agreement = " / ".join(f"{a:.3f}" for a in train.get("heldout_top1_agreement", []))
        params = f"{train['params'] / 1e6:.2f} M" if "params" in train else "0"
        lines.append(f"| `{name}` | {row['kind']} | {params} | {train.get('steps', '-')} | {agreement or '-'} | "
                     f"{row['tau_greedy']:.2f} |")
    (out / "tau.md").write_text("\n".join(lines) + "\n")
