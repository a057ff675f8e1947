"""Measure every available drafter of the model family; write the drafter table of results/models/README.md.

    python scripts/eval_drafters.py --models results/models --limit 20

For each arm kind that exists -- prompt_lookup; draft_model with every flashspec-draft-* folder; every trained
drafter folder (config.json `kind` medusa, eagle or streaming, from scripts/train_drafters.py) -- it reports
the parameters the arm adds to the target and its mean accepted length tau (tokens emitted per decoding
step of the target, the prefill not counted) at gamma = 4 (for tree arms: 4 nodes), greedy and at T = 1, on
the first turn of the first --limit prompts of MT-Bench, HumanEval and Alpaca (--data-dir): MT-Bench and
Alpaca through the tokenizer's chat template, HumanEval as the bare prompt. The table goes between the
README's drafter markers (the family's part of the README is left as it is); every number also goes to
drafters.json beside it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import transformers
from safetensors import safe_open

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from flashspec import ArmConfig, BanditConfig, FlashSpecConfig, SamplingConfig, SpeculativeEngine  # noqa: E402
from flashspec.arms import build_arm  # noqa: E402
from flashspec.config import TargetConfig  # noqa: E402
from flashspec.drafters.checkpoint import CONFIG, WEIGHTS  # noqa: E402
from flashspec.harness.data import DatasetConfig, encode, load_prompts  # noqa: E402
from flashspec.models import load_model  # noqa: E402
from flashspec.train.tau import tau  # noqa: E402

TARGET = "flashspec-target"
DRAFTER_KINDS = ("medusa", "eagle", "streaming")
DATASETS = {"mt_bench": True, "humaneval": False, "alpaca": True}  # name -> through the chat template
SAMPLINGS = {"greedy": SamplingConfig(), "T=1": SamplingConfig(temperature=1.0)}
BEGIN, END = "<!-- drafters:begin (scripts/eval_drafters.py) -->", "<!-- drafters:end -->"


def discover_arms(models: Path) -> dict[str, ArmConfig]:
    """Every arm kind the models folder can serve, by the name it gets in the table."""
    arms = {"prompt_lookup": ArmConfig(kind="prompt_lookup")}
    for path in sorted(models.glob("flashspec-draft-*")):
        arms[path.name] = ArmConfig(kind="draft_model", model=str(path))
    for path in sorted(p for p in models.iterdir() if (p / CONFIG).is_file() and (p / WEIGHTS).is_file()):
        kind = json.loads((path / CONFIG).read_text()).get("kind")
        if kind in DRAFTER_KINDS:
            arms[path.name] = ArmConfig(kind=kind, model=str(path))
    return arms


def added_params(arm: ArmConfig) -> int:
    """Parameters the arm brings besides the target's: a draft model's all, a drafter's stored tensors."""
    if arm.kind == "prompt_lookup":
        return 0
    path = Path(arm.model)
    files = [path / WEIGHTS] if arm.kind in DRAFTER_KINDS else sorted(path.glob("*.safetensors"))
    total = 0
    for file in files:
        with safe_open(file, "pt") as f:
            total += sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys())
    return total


def prompt_ids(tokenizer, data_dir: str | None, limit: int) -> dict[str, list[list[int]]]:
    """First-turn token ids of the first `limit` prompts of each dataset."""
    out = {}
    for name, chat in DATASETS.items():
        cfg = DatasetConfig(name=name, file=f"{name}.jsonl", chat=chat, limit=limit)
        prompts = load_prompts(cfg, data_dir)
        out[name] = [encode(tokenizer, [{"role": "user", "content": p.turns[0]}], chat) for p in prompts]
    return out


def evaluate(args: argparse.Namespace) -> dict:
    path = str(args.models / TARGET)
    target_cfg = TargetConfig(model=path, device=args.device, max_context=args.max_context)
    target, tokenizer = load_model(target_cfg.model, target_cfg)
    target_params = sum(p.numel() for p in target.model.parameters())
    prompts = prompt_ids(tokenizer, args.data_dir, args.limit)
    cfg = FlashSpecConfig(target=target_cfg, gammas=[args.gamma], bandit=BanditConfig("fixed"))
    rows = {}
    for name, arm_cfg in discover_arms(args.models).items():
        t0 = time.monotonic()
        engine = SpeculativeEngine(cfg, target=target, tokenizer=tokenizer,
                                   arms=[build_arm(arm_cfg, target, tokenizer, target_cfg)])
        params = added_params(arm_cfg)
        rows[name] = {"kind": arm_cfg.kind, "params": params, "params_pct": 100 * params / target_params,
                      "tau": {f"{d} {s}": round(tau(engine, prompts[d], sampling, args.max_new_tokens), 3)
                              for s, sampling in SAMPLINGS.items() for d in DATASETS}}
        print(f"[eval_drafters] {name}: {rows[name]['tau']} ({time.monotonic() - t0:.0f} s)", flush=True)
    return {"command": " ".join(["python", *sys.argv]), "target_params": target_params, "gamma": args.gamma,
            "limit": args.limit, "max_new_tokens": args.max_new_tokens, "device": args.device, "arms": rows}


def table(result: dict) -> str:
    columns = [f"{d} {s}" for s in SAMPLINGS for d in DATASETS]
    lines = [
        BEGIN,
        "## Drafters",
        "",
        f"Mean accepted length tau (tokens per decoding step of the target; 1 = no speedup possible) at "
        f"gamma = {result['gamma']} (tree arms: {result['gamma']} nodes), first turn of the first "
        f"{result['limit']} prompts per set, {result['max_new_tokens']} new tokens, {result['device']}; "
        f"parameters the arm adds to the {result['target_params'] / 1e6:.2f} M-parameter target. Made by "
        f"`{result['command']}` (all numbers in `drafters.json`).",
        "",
        "| arm | kind | added parameters | % of target | " + " | ".join(f"tau {c}" for c in columns) + " |",
        "|---|---|---|---|" + "---|" * len(columns),
    ]
    for name, row in result["arms"].items():
        taus = " | ".join(f"{row['tau'][c]:.2f}" for c in columns)
        size = f"{row['params'] / 1e6:.3f} M | {row['params_pct']:.1f} %"
        lines.append(f"| `{name}` | {row['kind']} | {size} | {taus} |")
    return "\n".join([*lines, END]) + "\n"


def write_readme(readme: Path, section: str) -> None:
    """Replace the marked drafter section, or append it; the rest of the README stays as it is."""
    text = readme.read_text() if readme.exists() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section.rstrip("\n") + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + section
    readme.write_text(text)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=Path("results/models"),
                        help=f"folder holding {TARGET}, the flashspec-draft-* models and trained drafters")
    parser.add_argument("--data-dir", default=None,
                        help="folder of the prompt sets (default: the packaged ones, flashspec/data; a relative "
                        "path is taken from the project root)")
    parser.add_argument("--limit", type=int, default=20, help="prompts per dataset")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--gamma", type=int, default=4)
    parser.add_argument("--max-context", type=int, default=2048)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    transformers.utils.logging.disable_progress_bar()
    if not (args.models / TARGET).is_dir():
        parser.error(f"no {TARGET} under {args.models}: train the family first (scripts/train_family.py)")
    result = evaluate(args)
    (args.models / "drafters.json").write_text(json.dumps(result, indent=2) + "\n")
    write_readme(args.models / "README.md", table(result))
    return result


if __name__ == "__main__":
    main()
