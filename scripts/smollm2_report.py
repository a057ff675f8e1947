"""experiment=smollm2_main's summary (issue 12): make_tables' speedup, throughput and acceptance tables (rows:
methods, the best fixed arm in hindsight; columns: datasets) and a README-ready summary.md: the device and
commit the runs name, per method whether every row reproduced the autoregressive tokens, and HumanEval pass@1
against autoregressive decoding's.

    python scripts/smollm2_report.py results/gpu/smollm2/smollm2_main [--out results/gpu/smollm2]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import pandas as pd

from flashspec.harness.analysis import labelled, load

AR = "autoregressive"


def script(name: str):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def checks(results: pd.DataFrame) -> pd.DataFrame:
    """Per method: rows, whether all reproduced the autoregressive tokens, HumanEval pass@1 (with AR's)."""
    rows = labelled(results)
    rows = rows.assign(lossless=rows["matches_baseline"].astype(str).str.lower() == "true")
    code = rows[rows["dataset"] == "humaneval"].assign(passed=lambda r: r["passed"].astype(str).str.lower() == "true")
    table = rows.groupby("label").agg(rows=("lossless", "size"), lossless=("lossless", "all"))
    table["HumanEval pass@1"] = code.groupby("label")["passed"].mean()
    ar = table.loc[AR, "HumanEval pass@1"] if AR in table.index else float("nan")
    table["= AR's"] = table["HumanEval pass@1"].isna() | (table["HumanEval pass@1"] == ar)
    return table.reset_index().rename(columns={"label": "method"})


def about(sweep: Path) -> str:
    infos = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/run.json"))]
    devices = sorted({i.get("device") or "?" for i in infos})
    commits = sorted({i.get("git_commit") or "?" for i in infos})
    return f"{len(infos)} runs on {', '.join(devices)}, commit {', '.join(commits)}"


def main(sweep: Path, out: Path) -> list[Path]:
    results = load(sweep).results
    written = script("make_tables").main(sweep, out / "tables")
    table = checks(results)
    parts = [f"# SmolLM2-135M-Instruct: speculative decoding (experiment=smollm2_main)\n\n{about(sweep)}; made by "
             f"`python scripts/smollm2_report.py {sweep}`.\n\n",
             (out / "tables" / "speedup.md").read_text(), "\n", (out / "tables" / "throughput.md").read_text(),
             "\nLossless: every row's tokens equal autoregressive decoding's (greedy); HumanEval pass@1 of each "
             "method's answers, and whether it equals autoregressive decoding's.\n\n",
             table.to_markdown(index=False, floatfmt=".3f"), "\n"]
    summary = out / "summary.md"
    summary.write_text("".join(parts))
    print(summary.read_text())
    if not table["lossless"].all() or not table["= AR's"].all():
        print("warning: a method did not reproduce autoregressive decoding: see the table above")
    return [*written, summary]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", type=Path, help="experiment=smollm2_main's sweep directory")
    parser.add_argument("--out", type=Path, help="where the tables and summary.md go (default: the sweep's parent)")
    args = parser.parse_args()
    main(args.sweep, args.out or args.sweep.parent)
