"""The paper's figures and tables, from the committed studies only (results/cpu/): the one command that
writes into paper/. scripts/plot.py and scripts/make_tables.py on any other sweep write into that sweep.

    python scripts/make_paper.py            # or: make paper
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "paper"
# study folder -> sub-folder of paper/figures and paper/tables ("": the folders themselves), as main.tex reads them
STUDIES = {"results/cpu/mt_bench_sweep": "", "results/cpu/drafter_study": "drafter_study"}


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
    print(f"paper/: {len(written)} files from {', '.join(STUDIES)}")
    return written


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    main()
