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
