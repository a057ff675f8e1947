"""The README's two commands are what a new user runs: CI runs the test command exactly, and the main command
prints a results table from a copy of the repository in an empty folder (no shared data folder beside it, nothing
outside the copy on the import path)."""

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import child_environment
from test_deploy import main_command, readme_block

ROOT = Path(__file__).resolve().parents[1]
LEFT_OUT = shutil.ignore_patterns(".git", "outputs", "multirun", "__pycache__", "*.egg-info", ".venv", ".*_cache")


def test_ci_runs_the_readme_test_command():
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert readme_block("test-command") in lines


def test_the_main_command_installs_only_the_package():
    install = readme_block("main-command").split("&&")[0]
    assert shlex.split(install)[-1] == ".", install  # no extras: run.py needs none of them


def copy_of_the_repository(dest: Path) -> Path:
    """The tracked (and not ignored) files, as a clone has them; the whole tree, less build outputs, elsewhere."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True)
    if listed.returncode != 0:
        return Path(shutil.copytree(ROOT, dest, ignore=LEFT_OUT))
    for name in filter(None, listed.stdout.split("\0")):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


def test_main_command_prints_a_results_table_from_a_fresh_copy(tmp_path):
    repo = copy_of_the_repository(tmp_path / "flashspec")
    assert not (tmp_path / "shared").exists() and (repo / "flashspec" / "data" / "mt_bench.jsonl").is_file()
    env = child_environment(repo)  # the copy first; the parent's PYTHONPATH after it (the GPU image's hydra)
    args = [sys.executable if arg in ("python", "python3") else arg for arg in main_command()]
    done = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    header = next((line.split() for line in done.stdout.splitlines() if "speedup" in line), None)
    assert header and {"method", "tau", "tok/s", "speedup"} <= set(header), done.stdout[-3000:]
    (results,) = (repo / "outputs" / "runs").glob("*/results.csv")
    assert f"results: {results.parent}" in done.stdout and (results.parent / "run.log").stat().st_size > 0
