"""From the result CSVs to the numbers the paper reports: labels, aggregates, the oracle, regret, arm shares.

Conventions: throughput over a group is total new tokens / total wall time (long answers weigh more), and the
speedup of a group (tables, the run summary) is its throughput over the baseline's on the same prompts;
per-prompt speedups (the rows' `speedup`) are what the speedup figure averages, with bootstrap confidence
intervals. Each says which it shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from flashspec.harness.store import TABLES

# What makes two rows measurements of the same prompt under the same conditions (the oracle compares these).
CONDITIONS = [
    "target", "temperature", "top_k", "top_p", "seed", "max_new_tokens", "dataset", "prompt_id", "turn",
]
ORACLE = "oracle (best fixed arm)"
STEP_ORACLE = "per-step oracle (clairvoyant)"  # replays only (flashspec/harness/replay.py)
NOT_LEARNING = ["fixed", "none", "step_oracle"]


@dataclass
class Tables:
    results: pd.DataFrame
    arms: pd.DataFrame
    trace: pd.DataFrame


def load(path: Path) -> Tables:
    """The tables of a sweep directory (or a single run's directory); each `<name>.csv`, or `<name>.csv.gz` as
    results/ keeps the long per-step trace."""
    found = {name: next((f for f in (path / f"{name}.csv", path / f"{name}.csv.gz") if f.is_file()), None)
             for name in TABLES}
    missing = [name for name, f in found.items() if f is None]
    if missing:
        files = ", ".join(m + ".csv" for m in missing)
        raise ValueError(f"{path} has no {files}: pass a run or sweep directory written by run.py "
                         "(one whose runs have finished)")
    return Tables(*(read_table(found[name]) for name in TABLES))


def read_table(path: Path) -> pd.DataFrame:
    # gamma is a label ("4", or "2+4+8" for a bandit over several); numeric only where a plot needs it
    return pd.read_csv(path, dtype={"gamma": str})


def label(row: pd.Series, with_gamma: bool = True) -> str:
    """A method's name in figures and tables: the baseline, the policy with its arms, or the fixed arm."""
    if row["method"] != "flashspec":
        return row["method"]
    if row["bandit"] == "none":
        return "autoregressive"
    if row["bandit"] == "fixed":
        name = f"fixed {row['fixed_arm']}"
    else:  # a policy that learns across prompts (scope=run) is another method than one reset per prompt
        across = {"run": " across prompts", "carry": " carried across prompts"}.get(row.get("bandit_scope"), "")
        name = f"{row['bandit']}{across} ({row['arm_set']})"
    return f"{name}, γ={row['gamma']}" if with_gamma else name


def labelled(results: pd.DataFrame, with_gamma: bool = True) -> pd.DataFrame:
    if results.empty:
        return results.assign(label=pd.Series(dtype=str))
    return results.assign(label=results.apply(label, axis=1, with_gamma=with_gamma))


def with_oracle(results: pd.DataFrame) -> pd.DataFrame:
    """Adds, per prompt and turn, the fastest `bandit=fixed` run as one more method: the best arm in
    hindsight."""
    fixed = results[results["bandit"] == "fixed"]
    if fixed.empty:
        return results
    best = fixed.loc[fixed.groupby(CONDITIONS, dropna=False)["tokens_per_s"].idxmax()]
    oracle = best.assign(method=ORACLE, bandit=None, fixed_arm=None, arm_set=None, gamma=None, run_id=ORACLE,
                         config_hash=None)
    return pd.concat([results, oracle], ignore_index=True)


def summarize(results: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Per group: rows, mean tau and alpha, throughput, the baseline's throughput on those rows, speedup."""
    def one(group: pd.DataFrame) -> pd.Series:
        rate = group["new_tokens"].sum() / group["wall_time_s"].sum()
        base = group["baseline_new_tokens"].sum() / group["baseline_wall_time_s"].sum()
        return pd.Series({"rows": len(group), "tau": group["tau"].mean(), "alpha": group["alpha"].mean(),
                          "tok/s": rate, "AR tok/s": base, "speedup": rate / base})

    groups = results.groupby(by, dropna=False, sort=True)
    table = pd.DataFrame([one(g) for _, g in groups], index=groups.size().index).reset_index()
    return table.astype({"rows": int})


def regret(trace: pd.DataFrame) -> pd.DataFrame:
    """Cumulative pseudo-regret per step of each (run, prompt, turn) against its best arm in hindsight.

    An arm's value is its mean tokens emitted per step in that request, and a step's regret is the best
    value minus the value of the arm played, so the curve is flat once the policy settles on the best arm."""
    keys = ["run_id", "prompt_id", "turn"]
    value = trace.groupby([*keys, "arm"])["emitted"].transform("mean")
    best = value.groupby([trace[k] for k in keys]).transform("max")
    out = trace.assign(regret=best - value).sort_values([*keys, "step"])
    return out.assign(cumulative_regret=out.groupby(keys)["regret"].cumsum())


def regret_curve(trace: pd.DataFrame) -> pd.DataFrame:
    """Cumulative regret of every request at every step up to the longest request of the trace: a request that
    has ended keeps its final value. Averaging the plain per-request curves instead lets the mean fall where
    short requests drop out (or, where a figure pools runs, where a run's longest request ends); this curve
    never falls."""
    keys = ["run_id", "prompt_id", "turn"]
    curves, last = [], int(trace["step"].max()) if len(trace) else 0
    for run_id, steps in regret(trace).groupby("run_id", sort=False):
        wide = steps.pivot_table(index="step", columns=["prompt_id", "turn"], values="cumulative_regret")
        wide = wide.reindex(range(1, last + 1)).ffill()
        curves.append(wide.stack(["prompt_id", "turn"], future_stack=True).rename("cumulative_regret")
                      .reset_index().assign(run_id=run_id))
    columns = [*keys, "step", "cumulative_regret"]
    return pd.concat(curves, ignore_index=True)[columns] if curves else pd.DataFrame(columns=columns)


def arm_share(trace: pd.DataFrame, bins: int = 10) -> pd.DataFrame:
    """Share of each arm among the steps in each of `bins` equal slices of every request's decoding."""
    keys = ["run_id", "prompt_id", "turn"]
    length = trace.groupby(keys)["step"].transform("max")
    phase = np.minimum(((trace["step"] - 1) * bins // length), bins - 1)
    counts = trace.assign(phase=(phase + 0.5) / bins).groupby(["run_id", "phase", "arm"]).size()
    counts = counts.unstack("arm", fill_value=0).stack()  # an arm not played in a slice has share 0 there
    share = (counts / counts.groupby(["run_id", "phase"]).transform("sum")).rename("share").reset_index()
    played = trace[["run_id", "arm"]].drop_duplicates()  # the unstack also paired runs with others' arms
    return share.merge(played, on=["run_id", "arm"])


# ---------------------------------------------------------------- the bandit study (experiment=bandit_study)
def read_splits(path: Path) -> dict[str, str]:
    """prompt id -> its `split` (tune or heldout), from a prompt file that has the field (bandit_mix.jsonl)."""
    records = pd.read_json(path, lines=True)
    if "split" not in records:
        raise ValueError(f"{path} has no `split` field: the bandit report needs the mixed workload's file "
                         "(scripts/make_bandit_mix.py writes it)")
    return dict(zip(records["id"].astype(str), records["split"], strict=True))


def row_speedups(results: pd.DataFrame) -> pd.Series:
    """Each row's speedup as time over AR's on the same prompt, per token: what the bandit tables compare, so a
    run measured while the machine was busier is compared against its own process's AR timing."""
    per_token = results["wall_time_s"] / results["new_tokens"]
    return (results["baseline_wall_time_s"] / results["baseline_new_tokens"]) / per_token


def oracle_arms(results: pd.DataFrame) -> pd.Series:
    """prompt id -> the fixed arm that was fastest on it (relative to AR, as row_speedups)."""
    fixed = results[results["bandit"] == "fixed"].assign(rel=row_speedups)
    return fixed.loc[fixed.groupby("prompt_id")["rel"].idxmax()].set_index("prompt_id")["fixed_arm"]


def speedup_of(rows: pd.DataFrame) -> float:
    """Total tokens over total time, against AR's on the same rows, each row's time put in its own AR's
    units first (AR token-times: row_speedups): the speedup of the group."""
    ar_time = rows["new_tokens"] / row_speedups(rows)
    return float(rows["new_tokens"].sum() / ar_time.sum())


SCOPE_NAMES = {"request": "reset per request", "run": "across requests", "carry": "carried, decayed"}


def policy_label(row: pd.Series) -> str:
    return f"{row['bandit']} ({row['bandit_reward']}), {SCOPE_NAMES.get(row['bandit_scope'], row['bandit_scope'])}"


def learning_rows(results: pd.DataFrame) -> pd.DataFrame:
    """The learning runs' rows with their label, policy (with its reward), scope and request number (in
    decoding order)."""
    learners = results[~results["bandit"].isin(NOT_LEARNING)].copy()
    learners["label"] = learners.apply(policy_label, axis=1)
    learners["policy"] = learners["bandit"] + " (" + learners["bandit_reward"] + ")"
    learners["scope"] = learners["bandit_scope"].map(lambda s: SCOPE_NAMES.get(s, s))
    learners["request"] = learners.groupby("run_id").cumcount() + 1
    return learners


def bandit_table(results: pd.DataFrame, trace: pd.DataFrame, splits: dict[str, str]) -> pd.DataFrame:
    """Per split: every fixed arm, the best fixed arm in hindsight, the per-prompt oracle, and every learning
    policy and scope with its speedup over seeds (mean, min, max), its ratios to the best fixed arm and to
    the oracle, and its exploring steps (steps on another arm than the prompt's oracle arm) per request."""
    results = results.assign(split=results["prompt_id"].map(splits))
    best_arm = oracle_arms(results)
    rows = []
    for split, part in results.groupby("split"):
        fixed = {arm: speedup_of(g) for arm, g in part[part["bandit"] == "fixed"].groupby("fixed_arm")}
        oracle_rows = part[part["bandit"] == "fixed"].assign(rel=row_speedups)
        oracle = speedup_of(oracle_rows.loc[oracle_rows.groupby("prompt_id")["rel"].idxmax()])
        best = max(fixed.values())
        for arm, value in fixed.items():
            rows.append({"split": split, "method": f"fixed {arm}", "speedup": value, "min": value, "max": value})
        rows.append({"split": split, "method": ORACLE, "speedup": oracle, "min": oracle, "max": oracle})
        clairvoyant = part[part["bandit"] == "step_oracle"]
        if len(clairvoyant):
            value = speedup_of(clairvoyant)
            rows.append({"split": split, "method": STEP_ORACLE, "speedup": value, "min": value, "max": value})
        learners = part[~part["bandit"].isin(NOT_LEARNING)]
        for label, group in learners.assign(label=learners.apply(policy_label, axis=1)).groupby("label"):
            per_seed = [speedup_of(g) for _, g in group.groupby("seed")]
            steps = trace[trace["run_id"].isin(group["run_id"]) & trace["prompt_id"].isin(part["prompt_id"])]
            off = steps["arm"] != steps["prompt_id"].map(best_arm)
            requests = len(steps[["run_id", "prompt_id", "turn"]].drop_duplicates())
            rows.append({"split": split, "method": label, "speedup": float(np.mean(per_seed)),
                         "min": min(per_seed), "max": max(per_seed), "seeds": len(per_seed),
                         "exploring steps / request": off.sum() / max(requests, 1),
                         "exploring share": float(off.mean()) if len(off) else np.nan})
        table = pd.DataFrame([r for r in rows if r["split"] == split])
        rows = [r for r in rows if r["split"] != split] + table.assign(
            **{"vs best fixed": table["speedup"] / best, "vs oracle": table["speedup"] / oracle}).to_dict("records")
    return pd.DataFrame(rows)


def request_regret(results: pd.DataFrame) -> pd.DataFrame:
    """Per learning run, in decoding order: each request's time lost against the per-prompt oracle, in AR
    token-times (the time AR takes per token on that prompt), and its cumulative sum over the run."""
    fixed = results[results["bandit"] == "fixed"].assign(rel=row_speedups)
    oracle = fixed.groupby("prompt_id")["rel"].max()
    learners = learning_rows(results)
    tokens = learners["new_tokens"]
    learners["regret"] = tokens / row_speedups(learners) - tokens / learners["prompt_id"].map(oracle)
    learners["cumulative_regret"] = learners.groupby("run_id")["regret"].cumsum()
    return learners[["run_id", "label", "policy", "scope", "seed", "prompt_id", "request", "regret",
                     "cumulative_regret"]]


def exploring_steps(results: pd.DataFrame, trace: pd.DataFrame) -> pd.DataFrame:
    """Per learning run and request (in decoding order): the steps played on another arm than the prompt's
    oracle arm."""
    best_arm = oracle_arms(results)
    learners = learning_rows(results)
    off = trace.assign(off=trace["arm"] != trace["prompt_id"].map(best_arm))
    counts = off.groupby(["run_id", "prompt_id", "turn"])["off"].sum().rename("exploring_steps").reset_index()
    return learners.merge(counts, on=["run_id", "prompt_id", "turn"], how="left")[
        ["run_id", "label", "policy", "scope", "seed", "request", "exploring_steps"]]
