"""Plant each known bug in a copy of the repository and run the tests meant to catch it.

    python scripts/mutation_check.py [--only NAME ...]

For each mutation: copy the repository's files (`git ls-files`, untracked but not ignored ones too) into a
temporary folder, replace one line, run the relevant tests there (PYTHONPATH = the copy), and report "caught"
when they fail. The same tests are first run on the unmutated copy: a mutation counts as caught only if they
pass there. Exits 1 if any mutation is not caught (or the baseline fails). Results: docs/testing.md.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str
    old: str  # must occur exactly once in `path`
    new: str
    tests: tuple[str, ...]


MUTATIONS = [
    Mutation("prompt lookup proposes from one token too early", "flashspec/arms/prompt_lookup.py",
             "start = int(hits[-1]) + n\n", "start = int(hits[-1]) + n - 1\n",
             ("tests/test_arms_pinned.py",)),
    Mutation("UCB1 bonus decays as 1/n", "flashspec/bandit/ucb1.py",
             "self.exploration * math.sqrt(log_n / n)", "self.exploration / n",
             ("tests/test_bandit_rules.py",)),
    Mutation("tokens kept after an EOS a step committed", "flashspec/engine.py",
             "ends = [i for i, t in enumerate(new) if t in self.eos_ids]", "ends = []",
             ("tests/test_eos_in_step.py",)),
    Mutation("tree arms get the block prefix's rows", "flashspec/engine.py",
             "        self.target.keep_path(cached, rows[: n + 1])\n        return rows[: n + 1]",
             "        self.target.keep_path(cached, rows[: n + 1])\n        return slice(0, n + 1)",
             ("tests/test_arms_pinned.py::test_tree_arms_hear_the_accepted_paths_rows",)),
    Mutation("bonus token drawn from the last draft's row", "flashspec/verify/reference.py",
             "p_n = p[rows, n]", "p_n = p[rows, n.clamp(max=max(g - 1, 0))]",
             ("tests/test_sampling_cache.py",)),
]


def copy_repo(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           check=True, capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file():  # a file deleted but not yet staged is listed too
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


def run_tests(copy: Path, tests: tuple[str, ...]) -> tuple[bool, str, float]:
    """(passed, pytest's summary line, seconds)."""
    env = {**os.environ, "PYTHONPATH": str(copy), "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests], cwd=copy,
                          env=env, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if re.search(r"\d+ (passed|failed|error)", ln)]
    return proc.returncode == 0, (lines[-1].strip("= ") if lines else proc.stdout[-300:]), time.perf_counter() - start


def check(mutation: Mutation) -> tuple[str, str, float]:
    with tempfile.TemporaryDirectory(prefix="flashspec-mutant-") as tmp:
        copy = Path(tmp)
        copy_repo(copy)
        passed, summary, seconds = run_tests(copy, mutation.tests)
        if not passed:
            return "baseline fails", summary, seconds
        target = copy / mutation.path
        text = target.read_text()
        if text.count(mutation.old) != 1:
            return "does not apply", f"{mutation.old!r} not found once in {mutation.path}: update MUTATIONS", 0.0
        target.write_text(text.replace(mutation.old, mutation.new))
        passed, summary, seconds = run_tests(copy, mutation.tests)
        return ("NOT caught" if passed else "caught"), summary, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", default=None, help="substrings of the mutation names to run")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if args.only is None or any(s in m.name for s in args.only)]
    print("| mutation | tests | verdict | mutant's test run |\n|---|---|---|---|")
    ok = True
    for mutation in chosen:
        verdict, summary, seconds = check(mutation)
        ok &= verdict == "caught"
        tests = ", ".join(f"`{t.removeprefix('tests/')}`" for t in mutation.tests)
        print(f"| {mutation.name} | {tests} | {verdict} | {summary} ({seconds:.0f} s) |", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
