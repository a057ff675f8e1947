"""run.py as a newcomer meets it: a bad input is one line on stderr and a non-zero exit, with no folder left
behind that could pass for a result; --verbose and HYDRA_FULL_ERROR=1 show the stack."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import child_environment

ROOT = Path(__file__).resolve().parents[1]


def run_py(tmp_path: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    quiet = {k: v for k, v in child_environment().items() if k != "HYDRA_FULL_ERROR"}
    environment = quiet | (env or {})
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args, f"hydra.run.dir={tmp_path}/run",
                           f"hydra.sweep.dir={tmp_path}/sweep"], cwd=tmp_path, env=environment,
                          capture_output=True, text=True, timeout=300)


def assert_one_line_error(done: subprocess.CompletedProcess, *phrases: str) -> None:
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-2000:]
    for phrase in phrases:
        assert phrase in lines[0]


CASES = {
    "unknown_key": (["+max_new_token=64"], ["unknown setting max_new_token", "max_new_tokens"]),
    "missing_model": (["target.model=/no/such/path"], ["/no/such/path", "does not exist"]),
}
if not torch.cuda.is_available():
    CASES["cuda_without_cuda"] = (["hardware=cuda"], ["no CUDA device found", "hardware=cpu"])


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_and_leaves_no_run_folder(tmp_path, case):
    args, phrases = CASES[case]
    assert_one_line_error(run_py(tmp_path, *args), *phrases)
    assert not (tmp_path / "run").exists()


def test_a_failing_sweep_leaves_no_job_folders(tmp_path):
    done = run_py(tmp_path, "-m", "gamma=2,4", "target.model=/no/such/path")
    assert done.returncode != 0 and done.stderr.strip().splitlines()[-1].startswith("error: target.model=")
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("how", ["--verbose", "HYDRA_FULL_ERROR"])
def test_verbose_shows_the_stack(tmp_path, how):
    args, env = (["--verbose"], None) if how == "--verbose" else ([], {"HYDRA_FULL_ERROR": "1"})
    done = run_py(tmp_path, *args, "target.model=/no/such/path", env=env)
    assert done.returncode != 0 and "Traceback (most recent call last)" in done.stderr
    assert "check_model_path" in done.stderr and not (tmp_path / "run").exists()
