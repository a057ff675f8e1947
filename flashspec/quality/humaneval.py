"""HumanEval pass@1: a completion passes iff the problem's tests run clean in a separate, limited process.

The program `prompt + completion + "\\n" + test + "\\n" + check(entry_point)` runs in a fresh interpreter
(`python -I`: no user site, no PYTHON* variables, not the caller's sys.path), in an empty temporary
directory, with an empty environment, its own session (a timeout kills everything it started), and
limits on address space, CPU time and file size. Model output is never executed in the caller's process.
This contains accidents (infinite loops, memory blow-ups, stray files); it is not a jail for hostile code:
run untrusted models inside a container (deploy/).
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

# Where a completion of the function body ends (the Codex paper's stop sequences): anything after is the
# model starting something else, which the tests must not run.
STOP_SEQUENCES = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")
TIMEOUT_S = 10.0
MEMORY_BYTES = 2 << 30
FILE_BYTES = 16 << 20


@dataclass
class Verdict:
    passed: bool
    detail: str  # "passed", "timed out after ...", or the last line the program wrote to stderr


def truncate(completion: str) -> str:
    """The completion up to the first stop sequence."""
    cuts = [completion.find(s) for s in STOP_SEQUENCES if s in completion]
    return completion[: min(cuts)] if cuts else completion


def program(prompt: str, completion: str, test: str, entry_point: str) -> str:
    return f"{prompt}{truncate(completion)}\n{test}\n\ncheck({entry_point})\n"


def check(prompt: str, completion: str, test: str, entry_point: str, timeout_s: float = TIMEOUT_S) -> Verdict:
    """Run the problem's tests on the completion in a sandboxed subprocess."""
    if not entry_point or not test:
        raise ValueError("a HumanEval problem needs `test` and `entry_point`: use records of humaneval.jsonl")
    return run_isolated(program(prompt, completion, test, entry_point), timeout_s)


def run_isolated(source: str, timeout_s: float = TIMEOUT_S) -> Verdict:
    if timeout_s <= 0:
        raise ValueError(f"timeout_s={timeout_s}: give the tests a positive time limit in seconds")
    with tempfile.TemporaryDirectory(prefix="flashspec-humaneval-") as cwd:
        Path(cwd, "program.py").write_text(source, encoding="utf-8")
        proc = subprocess.Popen(
            [sys.executable, "-I", "program.py"], cwd=cwd, env={"PATH": os.defpath}, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
            preexec_fn=lambda: limit_resources(timeout_s),
        )
        try:
            _, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the whole session: children the program forked too
            proc.communicate()
            return Verdict(False, f"timed out after {timeout_s:g} s")
    if proc.returncode == 0:
        return Verdict(True, "passed")
    lines = err.decode(errors="replace").strip().splitlines()
    return Verdict(False, lines[-1] if lines else f"exit status {proc.returncode}")


def limit_resources(timeout_s: float) -> None:
    """In the child, before exec: bounded memory, CPU seconds and written bytes."""
    cpu = int(timeout_s) + 1
    for limit, value in ((resource.RLIMIT_AS, MEMORY_BYTES), (resource.RLIMIT_CPU, cpu),
                         (resource.RLIMIT_FSIZE, FILE_BYTES)):
        _, hard = resource.getrlimit(limit)
        resource.setrlimit(limit, (value if hard == resource.RLIM_INFINITY else min(value, hard), hard))
