"""Decoding speed on one GPU into CSVs, figures and summary.md: flashspec/bench (python scripts/bench_gpu.py -h)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from flashspec.bench.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
