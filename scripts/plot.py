"""Figures from a sweep's CSVs, as PNG and PDF: speedup by dataset and method, tau against gamma, the arms'
share over decoding, and cumulative regret against the best arm in hindsight.

    python scripts/plot.py outputs/sweeps/<sweep> [--out <folder>]     # default: <sweep>/figures

A figure whose data the sweep lacks (no single-gamma runs, no bandit runs) is skipped with a message. The
paper's figures come from the committed studies only: scripts/make_paper.py (make paper).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from flashspec.harness.analysis import Tables, arm_share, labelled, load, regret_curve, with_oracle  # noqa: E402

sns.set_theme(style="whitegrid", context="paper")


def speedup(t: Tables) -> plt.Figure | None:
    data = labelled(with_oracle(t.results))
    data = data[data["label"] != "autoregressive"]  # 1 by definition
    if data.empty or data["speedup"].isna().all():
        return None
    # Wide enough for a bar per method and dataset; the legend beside the axes, where it hides no bar.
    width = 4 + 0.25 * data["label"].nunique() * data["dataset"].nunique()
    _, ax = plt.subplots(figsize=(min(max(width, 6.4), 16), 4.8))
    sns.barplot(data=data, x="dataset", y="speedup", hue="label", errorbar=("ci", 95), ax=ax)
    ax.axhline(1.0, color="black", linewidth=0.8)
    # The mean of per-prompt speedups; the tables' speedup is a ratio of totals (long answers weigh more).
    ax.set(ylabel="speedup over autoregressive\n(mean of per-prompt speedups, 95% CI)", xlabel="")
    sns.move_legend(ax, "upper left", bbox_to_anchor=(1.01, 1), title=None, frameon=False)
    return ax.figure


def tau_gamma(t: Tables) -> plt.Figure | None:
    data = labelled(t.results, with_gamma=False)
    data = data.assign(gamma=pd.to_numeric(data["gamma"], errors="coerce")).dropna(subset=["gamma", "tau"])
    if data["gamma"].nunique() < 2:  # one gamma: no curve to draw
        return None
    ax = sns.lineplot(data=data, x="gamma", y="tau", hue="label", style="dataset", marker="o",
                      errorbar=("ci", 95))
    ax.set(xlabel="γ (draft length)", ylabel="τ (tokens per target forward)")
    return ax.figure


def run_labels(t: Tables) -> pd.DataFrame:
    return labelled(t.results).drop_duplicates("run_id")[["run_id", "label"]]


def arm_shares(t: Tables) -> plt.Figure | None:
    if t.trace.empty:
        return None
    data = arm_share(t.trace).merge(run_labels(t), on="run_id")
    grid = sns.relplot(data=data, x="phase", y="share", hue="arm", col="label", col_wrap=3, kind="line",
                       marker="o", height=2.6, errorbar=None)
    grid.set_axis_labels("fraction of the request decoded", "share of steps")
    grid.set_titles("{col_name}")
    return grid.figure


def regrets(t: Tables) -> plt.Figure | None:
    if t.trace.empty:
        return None
    data = regret_curve(t.trace).merge(run_labels(t), on="run_id")
    ax = sns.lineplot(data=data, x="step", y="cumulative_regret", hue="label", errorbar=("ci", 95))
    ax.set(xlabel="decoding step", ylabel="cumulative regret per request (tokens, 95% CI)\n"
           "(a finished request keeps its final value)")
    return ax.figure


FIGURES: dict[str, Callable[[Tables], plt.Figure | None]] = {
    "speedup": speedup, "tau_gamma": tau_gamma, "arm_share": arm_shares, "regret": regrets,
}


def main(sweep: Path, out: Path) -> list[Path]:
    tables = load(sweep)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, draw in FIGURES.items():
        fig = draw(tables)
        if fig is None:
            print(f"{name}: no data for it in {sweep}, skipped")
            continue
        for ext in ("png", "pdf"):
            fig.savefig(out / f"{name}.{ext}", bbox_inches="tight", dpi=150)
            written.append(out / f"{name}.{ext}")
        plt.close(fig)
    print(f"{len(written)} figures written to {out}:", *(p.name for p in written))
    return written


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sweep", type=Path, help="a sweep (or run) directory with results/arms/trace.csv")
    parser.add_argument("--out", type=Path, help="where the figures go (default: <sweep>/figures)")
    args = parser.parse_args()
    main(args.sweep, args.out or args.sweep / "figures")
