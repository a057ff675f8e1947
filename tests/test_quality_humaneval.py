"""HumanEval pass@1: the sandboxed evaluator has power (right code passes, wrong code fails, runaway code is
stopped), and greedy speculative decoding scores exactly what autoregressive decoding scores."""

import time

import pandas as pd
import pytest

from flashspec.harness import runner, schema
from flashspec.harness.data import read_jsonl, resolve_data_dir
from flashspec.quality import humaneval

PROBLEMS = 20


@pytest.fixture(scope="module")
def problems() -> list[dict]:
    return read_jsonl(resolve_data_dir(schema.RunConfig().data_dir) / "humaneval.jsonl")[:PROBLEMS]


def check(problem: dict, completion: str, timeout_s: float = humaneval.TIMEOUT_S) -> humaneval.Verdict:
    prompt, test, entry_point = problem["turns"][0], problem["test"], problem["entry_point"]
    return humaneval.check(prompt, completion, test, entry_point, timeout_s)


def test_canonical_solutions_pass_and_wrong_ones_fail(problems):
    for problem in problems:
        right = check(problem, problem["reference"])
        assert right.passed, (problem["id"], right.detail)
        wrong = check(problem, "    raise NotImplementedError\n")
        assert not wrong.passed and "NotImplementedError" in wrong.detail, problem["id"]


def test_completion_is_cut_at_stop_sequences(problems):
    problem, reference = problems[0], problems[0]["reference"]
    # What follows a stop sequence would fail (a syntax error, a crash at import): it must not run.
    assert check(problem, reference + "\ndef broken(:\n").passed
    assert check(problem, reference + "\nprint(1 / 0)\n").passed
    # Without a stop sequence it is still the function body, and it is run.
    assert not check(problem, "    return None\n" + reference).passed


def test_runaway_programs_are_stopped(problems):
    start = time.monotonic()
    verdict = check(problems[0], "    while True:\n        pass\n", timeout_s=1.0)
    assert not verdict.passed and "timed out" in verdict.detail and time.monotonic() - start < 5
    greedy = check(problems[0], "    x = bytearray(8 << 30)\n    return True\n")  # over the memory limit
    assert not greedy.passed and "MemoryError" in greedy.detail


def test_program_runs_outside_the_callers_process_and_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # conftest.py sets HF_HUB_OFFLINE here: the program must see none of the caller's environment.
    source = "import os, sys\nopen('stray.txt', 'w')\nsys.exit(bool(os.environ.get('HF_HUB_OFFLINE')))"
    assert humaneval.run_isolated(source).passed and not (tmp_path / "stray.txt").exists()
    failed = humaneval.run_isolated("import sys\nsys.exit(3)")
    assert not failed.passed and failed.detail == "exit status 3"


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="entry_point"):
        humaneval.check("def f():\n", "    return 1\n", "def check(c): pass", "")
    with pytest.raises(ValueError, match="positive time limit"):
        humaneval.run_isolated("pass", timeout_s=0)


def run(tmp_path, *overrides: str) -> pd.DataFrame:
    cfg = schema.compose("dataset=humaneval", f"dataset.limit={PROBLEMS}", "max_new_tokens=24", "warmup=0",
                         "progress=false", *overrides)
    runner.main(cfg, tmp_path, tmp_path)
    return pd.read_csv(tmp_path / "results.csv").set_index("prompt_id")


def test_pass_at_1_of_greedy_speculative_equals_autoregressive(tmp_path, problems):
    ar = run(tmp_path / "ar", "bandit=none", "baseline=false")
    spec = run(tmp_path / "spec", "bandit=ucb1", "gamma=4")  # with the AR baseline: matches_baseline
    assert len(ar) == len(spec) == PROBLEMS and set(ar.index) == {p["id"] for p in problems}
    assert (spec["steps"] < spec["new_tokens"]).any()  # drafts were accepted
    assert (ar["new_tokens"] > 1).all()  # an answer, not EOS at once: the prompt's trailing newline is cut
    assert spec["matches_baseline"].all()  # the same tokens, hence the same programs
    assert ar["passed"].isin([True, False]).all()
    pd.testing.assert_series_equal(ar["passed"], spec.loc[ar.index, "passed"])
