"""run.py as a user runs it: a multirun sweep into one tidy CSV and figures, and a sweep killed mid-way."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from conftest import child_environment
from test_harness_analysis import script

from flashspec.harness.runner import COLUMNS
from flashspec.harness.store import DONE

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [["Count to five.", "Now backwards."], ["Name a colour.", "Another one."]]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("data")
    records = [{"id": f"t/{i}", "dataset": "t", "category": "c", "turns": turns, "reference": None}
               for i, turns in enumerate(PROMPTS)]
    (path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def command(data_dir: Path, sweep: Path, *overrides: str) -> list[str]:
    return [sys.executable, str(ROOT / "run.py"), "-m", "dataset=custom", "dataset.name=t",
            "dataset.file=t.jsonl", f"data_dir={data_dir}", "dataset.limit=1", "max_new_tokens=8",
            "progress=false", f"hydra.sweep.dir={sweep}", *overrides]


def launch(args: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(args, cwd=ROOT, env=child_environment(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def assert_drawn(png: Path) -> None:
    image = matplotlib.image.imread(png)
    assert image.ndim == 3 and len(np.unique(image.reshape(-1, image.shape[-1]), axis=0)) > 10


def check_sweep_tables(sweep: Path, runs: int) -> pd.DataFrame:
    """One row per (run, prompt, turn), none missing, duplicated or torn; arms and trace agree with it."""
    results = pd.read_csv(sweep / "results.csv")
    assert list(results.columns) == COLUMNS["results"]
    assert len(results) == runs * len(PROMPTS[0]) and results["config_hash"].nunique() == runs
    assert not results.duplicated(["run_id", "prompt_id", "turn"]).any()
    assert results.drop(columns=["category", "fixed_arm", "ttft_s", "passed"]).notna().all().all()
    arms, trace = pd.read_csv(sweep / "arms.csv"), pd.read_csv(sweep / "trace.csv")
    assert len(arms) == 2 * len(results)  # two arms per row
    assert len(trace) == (results["steps"] - 1).sum()  # one row per decoding step
    return results


def test_bandit_by_gamma_sweep_gives_one_csv_figures_and_tables(tmp_path, data_dir):
    sweep = tmp_path / "sweep"
    out = launch(command(data_dir, sweep, "bandit=ucb1,thompson", "gamma=2,4,8")).stdout
    assert "sweep summary" in out and f"results: {sweep}" in out
    results = check_sweep_tables(sweep, runs=6)
    assert set(zip(results["bandit"], results["gamma"], strict=True)) == {
        (b, g) for b in ("ucb1", "thompson") for g in (2, 4, 8)}
    figures = script("plot").main(sweep, tmp_path / "figures")
    assert {p.stem for p in figures} == {"speedup", "tau_gamma", "arm_share", "regret"}
    for png in (tmp_path / "figures").glob("*.png"):
        assert_drawn(png)
    assert all(p.stat().st_size > 0 for p in figures if p.suffix == ".pdf")


def test_killed_sweep_resumes_without_redoing_or_losing_runs(tmp_path, data_dir):
    sweep = tmp_path / "sweep"
    args = command(data_dir, sweep, "gamma=2,4", "warmup=0")
    log = tmp_path / "killed.log"
    with log.open("w") as sink:  # a file, not a pipe: a full pipe would stall the sweep
        proc = subprocess.Popen(args, cwd=ROOT, env=child_environment(), stdout=sink, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while not list(sweep.glob(f"*/{DONE}")):
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "no run finished in time"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = {m.parent: (m.stat().st_mtime_ns, (m.parent / "run.json").read_text())
             for m in sweep.glob(f"*/{DONE}")}
    assert len(first) == 1, "the kill should land mid-sweep"

    launch(args)
    check_sweep_tables(sweep, runs=2)
    for run, (mtime, info) in first.items():  # finished runs were skipped, not redone
        assert (run / DONE).stat().st_mtime_ns == mtime and (run / "run.json").read_text() == info
    assert len(list(sweep.glob(f"*/{DONE}"))) == 2
