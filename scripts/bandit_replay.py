"""The bandit study replayed on recorded drafts (flashspec/harness/replay.py): exact, seed-complete and free of
the wall clock's noise, timed by the cost model.

    python scripts/bandit_replay.py collect results/cpu/bandit_study/replay dataset.limit=64 [--shard 0/3]
    python scripts/bandit_replay.py simulate results/cpu/bandit_study/replay dataset.limit=64

`collect` builds the engine and prompts of experiment=bandit_study (plus any Hydra overrides, e.g.
dataset.limit=32), measures the cost model once (costs.json, or reads it) and writes every prompt's outcomes
(outcomes-<shard>.jsonl.gz); `--shard i/n` takes every n-th prompt from the i-th, so n processes share the work.
`simulate` plays every fixed pair, the per-step oracle and the study's policies over their seeds and writes
results.csv.gz and trace.csv.gz beside them; `python scripts/bandit_report.py <folder>` then writes the table and
figures into <folder>/report.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from flashspec.bandit.cost import CostModel, calibrate_costs
from flashspec.engine import SpeculativeEngine
from flashspec.harness import replay, schema
from flashspec.harness.data import PROJECT_ROOT, encode, load_prompts
from flashspec.harness.runner import device_name, git_commit, set_threads, versions

# The study's learning configurations (policy, reward, parameters): UCB1 (the old default, here on the cost model:
# wall-clock rewards are not replayed) with its default exploration and two smaller ones (tuned on the tune
# half), Thompson, BanditSpec's UCBSpec and EXP3Spec as the paper gives them (accepted tokens), and elimination
# UCB on either reward; each reset per request, carried across requests, and carried with three decays.
POLICIES = [
    ("ucb1", "cost_model", {}), ("ucb1", "cost_model", {"exploration": 0.3}),
    ("ucb1", "cost_model", {"exploration": 0.1}), ("thompson", "cost_model", {}),
    ("ucbspec", "accepted_tokens", {}), ("exp3spec", "accepted_tokens", {"horizon": None}),
    ("elimination_ucb", "cost_model", {}), ("elimination_ucb", "accepted_tokens", {}),
]
SCOPES = [("request", 0.0), ("run", 1.0), ("carry", 0.5), ("carry", 0.9), ("carry", 0.99)]  # (scope, its decay)
SEEDS = range(5)
# Policies whose choices use their random state; the others are deterministic under a deterministic reward
# (two seeds show it: the same choices), so their spread over seeds is zero by construction.
RANDOMIZED = {"thompson", "exp3spec", "exp3", "epsilon_greedy", "hedge"}


def config(overrides: list[str]) -> schema.RunConfig:
    schema.register()
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        named = any(o.startswith("experiment=") for o in overrides)  # e.g. experiment=bandit_study_gpu
        cfg = compose(config_name="config", overrides=[*([] if named else ["experiment=bandit_study"]), *overrides])
    return OmegaConf.to_object(cfg)


def record(out: Path, step: str, cfg: schema.RunConfig, overrides: list[str]) -> None:
    """What made the replay, per step, in <folder>/replay.json: device, commit, versions, overrides."""
    path = out / "replay.json"
    info = json.loads(path.read_text()) if path.is_file() else {}
    info[step] = {"device": device_name(cfg.target.device), "threads": set_threads(cfg), "git_commit": git_commit(),
                  "versions": versions(), "overrides": overrides, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    path.write_text(json.dumps(info, indent=2) + "\n")


def collect(out: Path, shard: str, overrides: list[str]) -> None:
    cfg = config(overrides)
    index, count = map(int, shard.split("/"))
    engine = SpeculativeEngine(schema.engine_config(cfg))
    out.mkdir(parents=True, exist_ok=True)
    record(out, f"collect {shard}", cfg, overrides)
    costs_path = out / "costs.json"
    if costs_path.is_file():
        engine.costs = CostModel.load(costs_path, engine.arm_names)
    else:
        engine.costs = calibrate_costs(engine)
        engine.costs.save(costs_path)
    prompts = load_prompts(cfg.dataset, cfg.data_dir)[index::count]
    outcomes = []
    for prompt in prompts:
        start = time.perf_counter()
        ids = encode(engine.tokenizer, [{"role": "user", "content": prompt.turns[0]}], cfg.dataset.chat)
        outcomes.append(replay.collect(engine, prompt.id, prompt.category, ids, cfg.max_new_tokens))
        replay.save(outcomes, out / f"outcomes-{index}.jsonl.gz")
        print(f"{prompt.id}: {len(outcomes[-1].tokens)} tokens, {time.perf_counter() - start:.1f} s", flush=True)


def simulate(out: Path, overrides: list[str]) -> None:
    cfg = config(overrides)
    order = [p.id for p in load_prompts(cfg.dataset, cfg.data_dir)]
    found = {o.prompt_id: o for f in sorted(out.glob("outcomes-*.jsonl*")) for o in replay.load(f)}
    outcomes = [found[i] for i in order if i in found]  # the run's decoding order: the mix's rounds
    pair_gammas = [g for _ in cfg.arms.arms for g in schema.gammas(cfg)]  # the engine's pairs, in its order
    costs = CostModel.load(out / "costs.json")
    policies = [replay.Policy(name, reward, scope, {k: v or cfg.max_new_tokens for k, v in params.items()}, decay)
                for name, reward, params in POLICIES for scope, decay in SCOPES]
    record(out, "simulate", cfg, overrides)
    runs = [(p, SEEDS if p.policy in RANDOMIZED else SEEDS[:2]) for p in policies]
    results, trace = replay.study(outcomes, costs, pair_gammas, runs)
    results.to_csv(out / "results.csv.gz", index=False)
    trace.to_csv(out / "trace.csv.gz", index=False)
    print(f"{len(outcomes)} prompts, {results['run_id'].nunique()} runs: {out}/results.csv.gz, trace.csv.gz")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["collect", "simulate"])
    parser.add_argument("out", type=Path, help="the replay's folder")
    parser.add_argument("--shard", default="0/1", help="collect: i/n, this process's share of the prompts")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides on top of experiment=bandit_study")
    args = parser.parse_intermixed_args()
    if args.step == "collect":
        collect(args.out, args.shard, args.overrides)
    else:
        simulate(args.out, args.overrides)


if __name__ == "__main__":
    main()
