"""Section e: the project's trained family (results/models) on MT-Bench / HumanEval / Alpaca, per arm and per
bandit; runs only when results/models/flashspec-target and the prompt files exist."""

from __future__ import annotations

import pandas as pd

import flashspec as fs
from flashspec.arms import build_arm
from flashspec.bandit import SELECTORS
from flashspec.bench.context import Bench, log
from flashspec.bench.measure import DEVICE


def family(bench: Bench) -> list[dict]:
    models, data = bench.args.models_dir, bench.args.data_dir
    if not (models / "flashspec-target").is_dir() or not data.is_dir():
        log(f"section e skipped: no {models / 'flashspec-target'} or no prompt folder {data}")
        return []
    from flashspec.harness.data import DatasetConfig, encode, load_prompts  # only this section needs it

    cfg = fs.TargetConfig(model=str(models / "flashspec-target"), device=DEVICE, dtype="bfloat16")
    base = fs.SpeculativeEngine(fs.FlashSpecConfig(target=cfg, bandit=fs.BanditConfig("none")))
    target, tokenizer = base.target, base.tokenizer
    drafts = sorted(d for d in models.glob("flashspec-draft-*") if d.is_dir())
    arm_cfgs = [fs.ArmConfig("prompt_lookup")] + [fs.ArmConfig("draft_model", str(d)) for d in drafts]
    arms = [build_arm(a, target, tokenizer, cfg) for a in arm_cfgs]
    runs = {arm.name: fs.BanditConfig("fixed", arm=i) for i, arm in enumerate(arms)}
    runs |= {policy: fs.BanditConfig(policy) for policy in sorted(SELECTORS) if policy != "fixed"}
    limit = 3 if bench.quick else bench.args.family_prompts
    sets = {"mt_bench": ("mt_bench.jsonl", True), "humaneval": ("humaneval.jsonl", False),
            "alpaca": ("alpaca.jsonl", True)}
    prompts = {name: [encode(tokenizer, [{"role": "user", "content": p.turns[0]}], chat)
                      for p in load_prompts(DatasetConfig(name, file, chat=chat, limit=limit), str(data))]
               for name, (file, chat) in sets.items()}
    new = bench.args.family_tokens
    engines = {"autoregressive": base} | {
        run: fs.SpeculativeEngine(fs.FlashSpecConfig(cfg, gammas=[4], bandit=bandit), target=target,
                                  tokenizer=tokenizer, arms=arms)
        for run, bandit in runs.items()
    }
    rows = []
    for run, engine in engines.items():
        if not bench.enough(30, f"family {run}"):
            continue
        engine.generate(prompts["mt_bench"][0], 16)  # captures the graphs this engine's steps use
        for name, ids in prompts.items():
            results = [engine.generate(p, new) for p in ids]
            tokens = sum(r.new_tokens - 1 for r in results)
            seconds = sum(r.wall_time_s - r.ttft_s for r in results)
            steps = sum(len(r.emitted) for r in results)
            rows.append(dict(dataset=name, run=run, prompts=len(ids), tok_s=tokens / seconds,
                             tau=sum(r.new_tokens for r in results) / steps))
    frame = pd.DataFrame(rows)
    if not frame.empty:
        ar = frame[frame["run"] == "autoregressive"].set_index("dataset")["tok_s"]
        frame["speedup"] = frame["tok_s"] / frame["dataset"].map(ar)
    return frame.to_dict("records")
