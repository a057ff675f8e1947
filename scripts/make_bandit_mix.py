"""Writes flashspec/data/bandit_mix.jsonl, the mixed workload of the bandit study (conf/dataset/bandit_mix.yaml):
Spec-Bench's six categories (MT-Bench, translation, summarization, qa, math_reasoning, rag), HumanEval and
Alpaca, their first turns only, of at most MAX_CHARS characters (about 1000 tokens: a long article leaves the
small targets' 2048-token context no room, and its prefill would dominate the time), shuffled. The file is in
rounds of one prompt per group (eight groups, in a shuffled order in each round), so its first 8 n prompts
hold n of each group; rounds alternate between the `tune` and the `heldout` split (the `split` field: even
rounds tune, odd rounds held out).

    python scripts/make_bandit_mix.py            # deterministic: seed 0, 10 rounds (80 prompts)
"""

from __future__ import annotations

import argparse
import json
import random

from flashspec.harness.data import PACKAGED_DATA, read_jsonl

SPEC_BENCH_TASKS = ("translation", "summarization", "qa", "math_reasoning", "rag")
MAX_CHARS = 3000


def groups() -> dict[str, list[dict]]:
    spec = read_jsonl(PACKAGED_DATA / "spec_bench.jsonl")
    out = {task: [r for r in spec if r["category"] == task] for task in SPEC_BENCH_TASKS}
    out["mt_bench"] = [r for r in spec if r["category"] not in SPEC_BENCH_TASKS]
    out["humaneval"] = read_jsonl(PACKAGED_DATA / "humaneval.jsonl")
    out["alpaca"] = read_jsonl(PACKAGED_DATA / "alpaca.jsonl")
    return out


def mix(rounds: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    short = {name: [r for r in records if len(r["turns"][0]) <= MAX_CHARS] for name, records in groups().items()}
    pools = {name: rng.sample(records, rounds) for name, records in short.items()}
    records = []
    for r in range(rounds):
        names = list(pools)
        rng.shuffle(names)
        for name in names:
            record = pools[name][r]
            records.append({"id": record["id"], "dataset": "bandit_mix", "category": name,
                            "turns": record["turns"][:1], "reference": None,
                            "split": "tune" if r % 2 == 0 else "heldout"})
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    path = PACKAGED_DATA / "bandit_mix.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in mix(args.rounds, args.seed)))
    print(f"{path}: {args.rounds * 8} prompts")


if __name__ == "__main__":
    main()
