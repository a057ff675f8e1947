"""Train drafters on a frozen target by self-distillation; each lands in OUT/flashspec-<kind>/ (config.json +
model.safetensors), loadable as ArmConfig(kind=<kind>, model=OUT/flashspec-<kind>).

    python scripts/train_drafters.py --target results/models/flashspec-target \\
        --drafters medusa,eagle,streaming --preset h100 --out results/models          # one GPU
    python scripts/train_drafters.py --target tiny --drafters medusa --preset tiny --out /tmp/drafters   # CPU
    OMP_NUM_THREADS=1 python scripts/train_drafters.py --target results/models/flashspec-target \
        --drafters medusa,streaming --preset cpu --time-budget-s 780 --out results/models   # ~15 min each

Each kind's trainer is flashspec/train/<kind>.py: train(target_path, out_dir, preset, device, seed) -> record.
`--format medusa,eagle` writes those kinds in their authors' layouts instead (Medusa-1's, EAGLE-1/2's), to
OUT/official-<kind>/, which their code and our arms both load (docs/baselines.md).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path

import transformers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

KINDS = ("medusa", "eagle", "streaming")
OFFICIAL = ("medusa", "eagle")  # kinds whose authors' layout --format can write
PRESETS = ("tiny", "cpu", "h100")  # tiny: a CPU test; cpu: 10 minutes on two cores; h100: one GPU


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", required=True, help="the target: a save_pretrained folder or 'tiny'")
    parser.add_argument("--drafters", required=True, help=f"comma-separated kinds from {', '.join(KINDS)}")
    parser.add_argument("--preset", choices=PRESETS, required=True)
    parser.add_argument("--out", type=Path, required=True, help="parent folder of the drafter folders")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time-budget-s", type=float, default=None,
                        help="training seconds per drafter, replacing the preset's (data and evaluation come on top)")
    parser.add_argument("--format", default="", help=f"comma-separated kinds from {', '.join(OFFICIAL)} to write "
                        "in their authors' layout (default: ours)")
    args = parser.parse_args(argv)
    official = {k.strip() for k in args.format.split(",") if k.strip()}
    if official - set(OFFICIAL):
        parser.error(f"--format {args.format!r}: choose from {', '.join(OFFICIAL)}")
    kinds = [k.strip() for k in args.drafters.split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown or not kinds:
        parser.error(f"--drafters {args.drafters!r}: choose from {', '.join(KINDS)}")
    if args.time_budget_s is not None and args.time_budget_s <= 0:
        parser.error(f"--time-budget-s {args.time_budget_s}: give a positive number of seconds")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    transformers.utils.logging.disable_progress_bar()
    records = {}
    for kind in kinds:
        trainer = importlib.import_module(f"flashspec.train.{kind}")
        layout = {"official": True} if kind in official else {}
        out = args.out / (f"official-{kind}" if layout else f"flashspec-{kind}")
        records[kind] = trainer.train(args.target, out, args.preset, args.device, args.seed, args.time_budget_s,
                                      **layout)
    print(json.dumps({k: {m: r[m] for m in ("params", "steps", "heldout_loss", "wall_time_s") if m in r}
                      for k, r in records.items()}, indent=2))
    return records


if __name__ == "__main__":
    main()
