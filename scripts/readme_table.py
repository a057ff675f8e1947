"""Regenerate the README's results table from the committed results, and nothing else.

    python scripts/readme_table.py                # rewrite README.md between the results-table markers
    python scripts/readme_table.py --check        # exit 1 if README.md is not what the results give

Sources, each used only when present (a missing one is said to be missing, never filled in):
results/gpu/smollm2/tables/speedup.md (the real target, by scripts/smollm2_report.py),
results/models/metrics.json (the trained family), results/gpu/ar.csv (autoregressive decoding against the
memory roofline), results/gpu/family.csv (speculative decoding of the trained family per prompt set) and
results/gpu/env.json (the GPU and commit they were measured on), and every CPU sweep's results.csv under
results/cpu/ (summarised by the harness's own `summarize`).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import pandas as pd

from flashspec.harness.analysis import labelled, read_table, summarize

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- results-table -->", "<!-- /results-table -->"


def cell(value) -> str:
    """Three significant digits, without exponents for large values (tok/s in the thousands)."""
    if not isinstance(value, float):
        return str(value)
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def markdown(frame: pd.DataFrame) -> list[str]:
    cells = [[cell(v) for v in row] for row in frame.itertuples(index=False)]
    head = "| " + " | ".join(map(str, frame.columns)) + " |"
    return [head, "|" + "---|" * len(frame.columns), *("| " + " | ".join(c) + " |" for c in cells)]


def read_csv(path: Path, needed: list[str]) -> pd.DataFrame:
    frame = pd.read_csv(path)
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise ValueError(f"{path} has no column(s) {missing} (it has {list(frame.columns)}): regenerate "
                         "it with scripts/bench_gpu.py, or teach scripts/readme_table.py the new columns")
    return frame


def family_section(results: Path) -> list[str]:
    path = results / "models" / "metrics.json"
    if not path.is_file():
        return ["**Trained model family**: no `results/models/metrics.json` yet (`scripts/train_family.py`)."]
    metrics = json.loads(path.read_text())
    rows = [{"model": name, "parameters": f"{m['params'] / 1e6:.2f} M", "held-out loss, code":
             m["heldout"]["code"]["loss"], "held-out loss, prose": m["heldout"]["prose"]["loss"],
             "training s": m["train_time_s"]} for name, m in metrics["models"].items()]
    title = f"**Trained model family** (`results/models`, {metrics.get('device', '?')}, one run of " \
            f"{metrics.get('wall_time_s', float('nan')):.0f} s):"
    return [title, "", *markdown(pd.DataFrame(rows))]


def gpu_sections(results: Path) -> list[str]:
    folder = results / "gpu"
    csvs = sorted(folder.glob("*.csv")) if folder.is_dir() else []
    if not csvs:
        return ["**GPU decoding speed**: not measured yet (`results/gpu/README.md` says why, and gives the command)."]
    env = json.loads((folder / "env.json").read_text()) if (folder / "env.json").is_file() else {}
    where = f"{env.get('device', 'GPU')}, commit `{str(env.get('commit', '?'))[:12]}`"
    out: list[str] = []
    if (folder / "ar.csv").is_file():
        ar = read_csv(folder / "ar.csv", ["shape", "prompt_tokens", "impl", "tok_s", "frac_roofline"])
        ar = ar.assign(frac_roofline=100 * ar["frac_roofline"])
        ar = ar.rename(columns={"tok_s": "tok/s", "frac_roofline": "% of roofline"})
        out += [f"**Autoregressive decoding, batch 1** ({where}; `results/gpu/ar.csv`):", "",
                *markdown(ar[["shape", "prompt_tokens", "impl", "tok/s", "% of roofline"]]), ""]
    if (folder / "family.csv").is_file():
        fam = read_csv(folder / "family.csv", ["dataset", "run", "speedup"])
        table = fam.pivot_table(index="run", columns="dataset", values="speedup").reset_index()
        title = "**Speedup over autoregressive decoding, trained family**"
        out += [f"{title} ({where}; `results/gpu/family.csv`):", "", *markdown(table), ""]
    others = [f"`{p.name}`" for p in csvs if p.stem not in ("ar", "family")]
    if others:
        out.append(f"Also measured, in `results/gpu/`: {', '.join(others)} (see `results/gpu/summary.md`).")
    return out or ["**GPU decoding speed**: `results/gpu/` holds none of ar.csv, family.csv."]


def cpu_sections(results: Path) -> list[str]:
    out: list[str] = []
    for path in sorted((results / "cpu").glob("*/results.csv")):
        table = summarize(labelled(read_table(path)), ["label", "dataset"])
        # One row per method, tau and speedup per prompt set: the whole study on one screen.
        wide = table.pivot(index="label", columns="dataset", values=["tau", "speedup"])
        wide = wide.sort_index(axis=1, level=1, sort_remaining=False)
        wide.columns = [f"{dataset} {'τ' if value == 'tau' else 'speedup'}" for value, dataset in wide.columns]
        table = wide.reset_index().rename(columns={"label": "method"})
        readme = (path.parent.parent / "README.md").relative_to(results.parent)
        where = f"`{path.relative_to(results.parent)}`, CPU; the command is in `{readme}`"
        out += [f"**Speculative decoding of the trained family, the embedded CPU demo** ({where}):", "",
                *markdown(table), ""]
    return out


def smollm2_section(results: Path) -> list[str]:
    """The real target first: scripts/smollm2_report.py's speedup table, with where it stands."""
    folder = results / "gpu" / "smollm2"
    table = folder / "tables" / "speedup.md"
    if not table.is_file():
        return ["**SmolLM2-135M-Instruct (the real target)**: not measured yet (`results/gpu/smollm2/README.md`)."]
    title = ("**SmolLM2-135M-Instruct, the real target: speedup over our autoregressive decoding, greedy, "
             "gamma 4** (NVIDIA H200, 4 prompts per dataset; every flashspec row token-identical to autoregressive "
             "decoding; transformers' rows from an earlier session, on the datasets it reached: "
             "`results/gpu/smollm2/README.md`):")
    return [title, "", *table.read_text().strip().splitlines(), ""]


def render(results: Path) -> str:
    sections = [*smollm2_section(results), *family_section(results), "", *cpu_sections(results),
                *gpu_sections(results)]
    return "\n".join(sections).strip() + "\n"


def replace_block(text: str, block: str) -> str:
    pattern = re.compile(rf"{re.escape(BEGIN)}.*?{re.escape(END)}", re.S)
    if not pattern.search(text):
        raise ValueError(f"README has no {BEGIN} ... {END} markers: add them where the table belongs")
    return pattern.sub(lambda _: f"{BEGIN}\n{block}{END}", text, count=1)


def main(argv: list[str] | None = None) -> int:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    parser.add_argument("--results", type=Path, default=ROOT / "results")
    parser.add_argument("--check", action="store_true", help="only report whether README.md is up to date")
    args = parser.parse_args(argv)
    old = args.readme.read_text()
    new = replace_block(old, render(args.results))
    if args.check:
        state = "up to date" if new == old else "out of date: run scripts/readme_table.py"
        print(f"{args.readme} is {state}")
        return int(new != old)
    args.readme.write_text(new)
    print(f"wrote the results table of {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
