"""Train the flashspec model family (tokenizer + Llama target + two drafts) on real text of this machine.

    python scripts/train_family.py --preset h100 --out results/models            # one GPU, 8 minutes
    python scripts/train_family.py --preset tiny --out /tmp/family                # CPU, about a minute
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from flashspec.train.family import PRESETS, train_family  # noqa: E402

OVERRIDES = {  # preset field -> (type, help): a flag that replaces the preset's value
    "time_budget_s": (float, "hard wall for the whole run after imports"),
    "max_corpus_mb": (float, "on-disk MB of each kind (code, prose) to read"),
    "batch_size": (int, "sequences per optimizer step"),
    "eval_tokens": (int, "held-out tokens per kind and model"),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), required=True)
    parser.add_argument("--out", type=Path, required=True, help="folder for the model folders + metrics.json")
    for name, (kind, help_text) in OVERRIDES.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, help=f"{help_text} (default: preset's)")
    parser.add_argument("--tar-dir", type=Path, help="also pack the outputs into tars of <= 15 MiB here")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes reading files")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compile", action="store_true", help="torch.compile each model (costs its budget)")
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")  # encode the corpus on every core
    transformers.utils.logging.disable_progress_bar()
    overrides = {name: getattr(args, name) for name in OVERRIDES if getattr(args, name) is not None}
    preset = replace(PRESETS[args.preset], **overrides)
    train_family(preset, args.out, torch.device(args.device), args.workers, seed=args.seed,
                 compile_model=args.compile, tar_dir=args.tar_dir)


if __name__ == "__main__":
    main()
