"""Train drafters on a frozen target by self-distillation; each lands in OUT/flashspec-<kind>/ (config.json +
model.safetensors), loadable as ArmConfig(kind=<kind>, model=OUT/flashspec-<kind>) (the `draft` kind, a
shared-head draft model, as ArmConfig(kind="draft_model", model=OUT/flashspec-draft)). The target is loaded and
the self-distillation data made once for all of them; then a quick greedy tau of each on held-out corpus
prompts goes to OUT/tau.json and OUT/tau.md (flashspec/train/tau.py).

    python scripts/train_drafters.py --target $FLASHSPEC_CACHE/smollm2-135m-instruct \\
        --drafters draft,medusa,eagle,streaming --preset h100 --time-budget-s 30 --out results/models/smollm2
    python scripts/train_drafters.py --target results/models/flashspec-target \\
        --drafters medusa,eagle,streaming --preset h100 --out results/models          # one GPU
    python scripts/train_drafters.py --target tiny --drafters medusa --preset tiny --out /tmp/drafters   # CPU
    OMP_NUM_THREADS=1 python scripts/train_drafters.py --target results/models/flashspec-target \
        --drafters medusa,streaming --preset cpu --time-budget-s 780 --out results/models   # ~15 min each

Each kind's trainer is flashspec/train/<kind>.py: train(target_path, out_dir, preset, device, seed,
time_budget_s, data) -> record. `--format medusa,eagle` writes those kinds in their authors' layouts instead
(Medusa-1's, EAGLE-1/2's), to OUT/official-<kind>/, which their code and our arms both load (docs/baselines.md).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from flashspec import ArmConfig  # noqa: E402
from flashspec.train import feature_drafters, tau  # noqa: E402

KINDS = ("draft", "medusa", "eagle", "streaming")
ARM_KINDS = {"draft": "draft_model"}  # the arm that loads a kind's folder, where its name differs
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
    parser.add_argument("--prompts", choices=("chat", "plain"), default=None,
                        help="chat: the corpus windows as user turns in the target's chat template (where it has "
                        "one); plain: bare windows (default: the preset's, chat except for tiny)")
    parser.add_argument("--tau-prompts", type=int, default=None,
                        help="held-out prompts for the quick tau afterwards (default: the preset's; 0: skip it)")
    parser.add_argument("--tau-new-tokens", type=int, default=64)
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
    if args.tau_prompts is not None and args.tau_prompts < 0:
        parser.error(f"--tau-prompts {args.tau_prompts}: give 0 (no tau) or more prompts")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    transformers.utils.logging.disable_progress_bar()
    torch.backends.cuda.matmul.allow_tf32 = True  # the float32 target's data and states; drafters train in bf16
    t0 = time.monotonic()
    try:
        data = feature_drafters.distill(args.target, args.preset, args.device, args.seed,
                                        chat=None if args.prompts is None else args.prompts == "chat")
    except ValueError as err:  # an unknown target or too little corpus: one line, no traceback
        parser.error(str(err))
    records, folders = {}, {}
    for kind in kinds:
        trainer = importlib.import_module(f"flashspec.train.{kind}")
        layout = {"official": True} if kind in official else {}
        out = folders[kind] = args.out / (f"official-{kind}" if layout else f"flashspec-{kind}")
        records[kind] = trainer.train(args.target, out, args.preset, args.device, args.seed, args.time_budget_s,
                                      data=data, **layout)
    print(json.dumps({k: {m: r[m] for m in ("params", "steps", "heldout_loss", "wall_time_s") if m in r}
                      for k, r in records.items()}, indent=2))
    n_tau = feature_drafters.FIT[args.preset].eval_prompts if args.tau_prompts is None else args.tau_prompts
    if n_tau:
        device = str(data.target.device)
        prompts = data.eval_prompts[:n_tau].tolist()
        del data  # the float32 target and its windows: tau loads the target as the study does
        arms = {"prompt_lookup": ArmConfig(kind="prompt_lookup"),
                **{folders[k].name: ArmConfig(kind=ARM_KINDS.get(k, k), model=str(folders[k])) for k in kinds}}
        record = {"command": " ".join(["python", *sys.argv]) if argv is None else "main(" + " ".join(argv) + ")",
                  "tau": tau.measure(args.target, arms, prompts, device, max_new=args.tau_new_tokens),
                  "drafters": {folders[k].name: r for k, r in records.items()},
                  "wall_time_s": round(time.monotonic() - t0, 1)}
        tau.write_record(args.out, record)
        print((args.out / "tau.md").read_text(), flush=True)
    return records


if __name__ == "__main__":
    main()
