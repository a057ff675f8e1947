"""The bandit study's table and figures (experiment=bandit_study): per split (tune, held out) each fixed arm,
the best fixed arm in hindsight, the per-prompt oracle and every learning policy and scope, with the spread
over seeds; the cumulative regret against the oracle over a run's requests; the exploring steps per request.

    python scripts/bandit_report.py results/cpu/bandit_study [--out <folder>]    # default: <sweep>/report

The paper's copy comes from scripts/make_paper.py (make paper).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from flashspec.harness.analysis import (  # noqa: E402
    bandit_table,
    exploring_steps,
    read_splits,
    read_table,
    request_regret,
)
from flashspec.harness.data import PACKAGED_DATA  # noqa: E402

sns.set_theme(style="whitegrid", context="paper")
COLUMNS = ["method", "speedup", "min", "max", "seeds", "vs best fixed", "vs oracle", "exploring steps / request",
           "exploring share"]


def markdown(table: pd.DataFrame, device: str) -> str:
    parts = [f"Speedup over autoregressive decoding ({device}); learning policies: the mean over seeds, min and "
             "max; vs best fixed / vs oracle: that mean over the best fixed arm in hindsight and over the per-prompt "
             "oracle of the same split; exploring steps: steps on another arm than the prompt's oracle arm.\n"]
    for split in ("tune", "heldout"):
        part = table[table["split"] == split].reindex(columns=COLUMNS)
        part = part.sort_values("speedup", ascending=False)
        parts.append(f"\n### {split}\n\n" + part.to_markdown(index=False, floatfmt=".3f") + "\n")
    return "".join(parts)


def by_scope(data: pd.DataFrame, y: str, ylabel: str) -> plt.Figure:
    """One panel per scope, one line per policy (with its reward), the band spanning the seeds."""
    grid = sns.relplot(data=data, x="request", y=y, hue="policy", col="scope", col_wrap=3, kind="line",
                       errorbar=("pi", 100), height=3.2, aspect=1.2)
    grid.set_titles("{col_name}")
    grid.set_axis_labels("request (decoding order)", ylabel)
    return grid.figure


def regret_figure(regret: pd.DataFrame) -> plt.Figure:
    return by_scope(regret, "cumulative_regret", "cumulative regret vs the per-prompt\noracle (AR token-times)")


def exploring_figure(steps: pd.DataFrame) -> plt.Figure:
    return by_scope(steps, "exploring_steps", "steps off the prompt's oracle arm")


def main(sweep: Path, tables_out: Path, figures_out: Path | None = None) -> list[Path]:
    results, trace = (read_table(found(sweep, name)) for name in ("results", "trace"))
    splits = read_splits(PACKAGED_DATA / "bandit_mix.jsonl")
    device = describe_device(sweep)
    figures_out = figures_out or tables_out
    tables_out.mkdir(parents=True, exist_ok=True)
    figures_out.mkdir(parents=True, exist_ok=True)
    table = bandit_table(results, trace, splits)
    written = [tables_out / "bandit_table.md", tables_out / "bandit_table.csv"]
    written[0].write_text(markdown(table, device))
    table.to_csv(written[1], index=False)
    for name, figure in (("regret", regret_figure(request_regret(results))),
                         ("exploring", exploring_figure(exploring_steps(results, trace)))):
        for ext in ("png", "pdf"):
            figure.savefig(figures_out / f"{name}.{ext}", bbox_inches="tight")
            written.append(figures_out / f"{name}.{ext}")
        plt.close(figure)
    print(written[0].read_text())
    print(f"{len(written)} files written:", *(str(p) for p in written))
    return written


def found(sweep: Path, name: str) -> Path:
    """A study's `<name>.csv` or `<name>.csv.gz` (a replay has no arms table, so analysis.load does not fit)."""
    for path in (sweep / f"{name}.csv", sweep / f"{name}.csv.gz"):
        if path.is_file():
            return path
    raise ValueError(f"{sweep} has no {name}.csv: pass a bandit study's sweep or replay folder")


def describe_device(sweep: Path) -> str:
    """The device the runs name in their run.json (one sweep, one machine), or a replay in its replay.json: where
    its drafts and cost model were recorded (the `collect` steps) and, when elsewhere, where it was replayed."""
    devices = {json.loads(p.read_text()).get("device") for p in sweep.glob("*/run.json")}
    if (sweep / "replay.json").is_file():
        steps = json.loads((sweep / "replay.json").read_text())
        collected = {s["device"] for name, s in steps.items() if name.startswith("collect")}
        simulated = {s["device"] for name, s in steps.items() if name == "simulate"}
        if collected and simulated and collected != simulated:  # e.g. recorded on a GPU, replayed on a CPU
            devices.add(f"drafts and cost model measured on {', '.join(sorted(collected))}; replayed on "
                        f"{', '.join(sorted(simulated))}")
        else:
            devices |= {f"cost model measured on {d}; replayed" for d in collected | simulated}
    return ", ".join(sorted(d for d in devices if d)) or "device not recorded"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", type=Path, help="the bandit study's sweep directory")
    parser.add_argument("--out", type=Path, help="where the table and figures go (default: <sweep>/report)")
    args = parser.parse_args()
    out = args.out or args.sweep / "report"
    main(args.sweep, out)
