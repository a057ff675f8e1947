"""The paper's figures and tables, from the committed studies only (results/cpu/, and the real target's
results/gpu/smollm2/): the one command that writes into paper/. scripts/plot.py and scripts/make_tables.py on
any other sweep write into that sweep.

    python scripts/make_paper.py            # or: make paper
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "paper"
# study folder -> sub-folder of paper/figures and paper/tables ("": the folders themselves), as main.tex reads them
STUDIES = {"results/cpu/mt_bench_sweep": "", "results/cpu/drafter_study": "drafter_study",
           "results/gpu/smollm2/smollm2_main": "smollm2"}
# studies with their own report script (scripts/bandit_report.py): study folder -> sub-folder, as above, and what
# its table's caption says of the target and the timing (the GPU's wall-clock study is too noisy to rank the
# policies: results/gpu/smollm2/README.md summarises it, its files are in git at 46baef8)
BANDIT_STUDIES = {"results/cpu/bandit_study/replay": ("bandit_study", "the family on a CPU, replayed on a cost model"),
                  "results/gpu/smollm2/bandit_replay": ("bandit_study_gpu", "SmolLM2-135M-Instruct, drafts and "
                                                                            "costs recorded on an H200, replayed "
                                                                            "on a cost model")}


def script(name: str):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(root: Path = ROOT, paper: Path = PAPER) -> list[Path]:
    plot, tables = script("plot"), script("make_tables")
    written = []
    for study, sub in STUDIES.items():
        sweep = root / study
        written += plot.main(sweep, paper / "figures" / sub)
        written += tables.main(sweep, paper / "tables" / sub)
    report = script("bandit_report")
    for study, (sub, what) in BANDIT_STUDIES.items():
        out = paper / "tables" / sub
        written += report.main(root / study, out, paper / "figures" / sub)
        written += bandit_latex(tables, out, what)
    print(f"paper/: {len(written)} files from {', '.join([*STUDIES, *BANDIT_STUDIES])}")
    return written


def bandit_latex(tables, out: Path, what: str) -> list[Path]:
    """The bandit table's held-out half as LaTeX, in make_tables' format (main.tex inputs it)."""
    table = pd.read_csv(out / "bandit_table.csv")
    held = table[table["split"] == "heldout"].set_index("method")
    held = held[["speedup", "min", "max", "vs best fixed", "vs oracle", "exploring steps / request"]]
    caption = (f"Bandit study ({what}), held-out half of the mixed workload: speedup over autoregressive "
               "decoding (mean over seeds, min, max), against the best fixed arm in hindsight and the per-prompt "
               "oracle, and steps per request spent off the prompt's oracle arm.")
    path = out / "bandit_table.tex"
    path.write_text(tables.latex(held.sort_values("speedup", ascending=False), caption, out.name))
    return [path]


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    main()
