"""The paper's tables from a sweep's CSVs, as Markdown and LaTeX: throughput per dataset, mean acceptance
rate, and speedup over autoregressive decoding (rows: methods and the best fixed arm in hindsight; columns:
datasets).

    python scripts/make_tables.py outputs/sweeps/<sweep> [--out <folder>]    # default: <sweep>/tables

paper/main.tex inputs the .tex files by name; they are made from the committed studies only, by
scripts/make_paper.py (make paper).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from flashspec.harness.analysis import labelled, load, summarize, with_oracle

METRICS = {  # file -> (summary column, caption)
    "throughput": ("tok/s", "Throughput (new tokens per second over all prompts)."),
    "alpha": ("alpha", "Mean acceptance rate $\\alpha$ (accepted / drafted tokens)."),
    "speedup": ("speedup", "Speedup over autoregressive decoding of the same target on the same prompts: total "
                "new tokens over total time, over the baseline's (the speedup figure averages per-prompt "
                "speedups instead)."),
}
LATEX_SPECIALS = {"_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#", "γ": r"$\gamma$", "τ": r"$\tau$"}


def pivot(results: pd.DataFrame, column: str) -> pd.DataFrame:
    table = summarize(labelled(with_oracle(results)), ["label", "dataset"])
    return table.pivot(index="label", columns="dataset", values=column)


def cell(value: float) -> str:
    return "–" if pd.isna(value) else f"{value:.2f}"


def markdown(table: pd.DataFrame, caption: str) -> str:
    header = ["method", *map(str, table.columns)]
    lines = [caption.replace("$\\alpha$", "α"), "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows = zip(table.index, table.values, strict=True)
    lines += ["| " + " | ".join([str(i), *map(cell, row)]) + " |" for i, row in rows]
    return "\n".join(lines) + "\n"


def escape(text: str) -> str:
    return "".join(LATEX_SPECIALS.get(ch, ch) for ch in text)


def latex(table: pd.DataFrame, caption: str, name: str) -> str:
    header = " & ".join(escape(str(c)) for c in ["method", *table.columns])
    rows = zip(table.index, table.values, strict=True)
    body = "\n".join(" & ".join([escape(str(i)), *map(cell, row)]) + r" \\" for i, row in rows)
    return (
        "\\begin{table}[t]\n\\centering\n\\small\n"
        f"\\begin{{tabular}}{{l{'r' * len(table.columns)}}}\n\\toprule\n{header} \\\\\n\\midrule\n{body}\n"
        f"\\bottomrule\n\\end{{tabular}}\n\\caption{{{caption}}}\n\\label{{tab:{name}}}\n\\end{{table}}\n"
    )


def main(sweep: Path, out: Path) -> list[Path]:
    results = load(sweep).results
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (column, caption) in METRICS.items():
        table = pivot(results, column)
        (out / f"{name}.md").write_text(markdown(table, caption))
        (out / f"{name}.tex").write_text(latex(table, caption, name))
        written += [out / f"{name}.md", out / f"{name}.tex"]
        print(f"{name}\n{markdown(table, caption)}")
    print(f"{len(written)} tables written to {out}:", *(p.name for p in written))
    return written


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sweep", type=Path, help="a sweep (or run) directory holding results.csv")
    parser.add_argument("--out", type=Path, help="where the tables go (default: <sweep>/tables)")
    args = parser.parse_args()
    main(args.sweep, args.out or args.sweep / "tables")
