"""Single runs in this process: every method on a one-prompt set, and the rows they write."""

import json

import pandas as pd
import pytest

from flashspec.harness import runner, schema
from flashspec.harness.runner import COLUMNS


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("data")
    record = {"id": "t/1", "dataset": "t", "category": "c", "turns": ["Say hi.", "Again."], "reference": None}
    (path / "t.jsonl").write_text(json.dumps(record) + "\n")
    return path


def compose(data_dir, *overrides: str):
    return schema.compose("target=tiny", "dataset=custom", "dataset.name=t", "dataset.file=t.jsonl",
                          f"data_dir={data_dir}", "max_new_tokens=6", "progress=false", *overrides)


def run(tmp_path, data_dir, *overrides: str) -> pd.DataFrame:
    runner.main(compose(data_dir, *overrides), tmp_path, tmp_path)
    return pd.read_csv(tmp_path / "results.csv")


@pytest.mark.parametrize("method", ["hf_eager", "hf_static", "hf_assisted", "hf_prompt_lookup"])
def test_transformers_generate_baselines(tmp_path, data_dir, method):
    rows = run(tmp_path, data_dir, f"method={method}")
    assert list(rows.columns) == COLUMNS["results"] and len(rows) == 2  # both turns
    assert (rows["method"] == method).all() and rows["bandit"].isna().all() and rows["tau"].isna().all()
    assert (rows["new_tokens"] > 0).all() and (rows["speedup"] > 0).all()
    assert rows["matches_baseline"].all()  # greedy: transformers reproduces the engine's AR tokens
    assert rows["gamma"].notna().all() == (method in ("hf_assisted", "hf_prompt_lookup"))


def test_flashspec_run_writes_arms_trace_and_run_json(tmp_path, data_dir):
    rows = run(tmp_path, data_dir, "bandit=fixed", "bandit.arm=1", "gamma=3")
    assert rows["matches_baseline"].all() and (rows["fixed_arm"] == "draft:tiny-draft").all()
    arms = pd.read_csv(tmp_path / "arms.csv")
    trace = pd.read_csv(tmp_path / "trace.csv")
    assert len(arms) == 2 * 2  # two turns, two arms
    assert arms.groupby("turn")["pulls"].sum().tolist() == (rows["steps"] - 1).tolist()  # minus the prefill
    assert set(trace["arm"]) == {"draft:tiny-draft"} and len(trace) == (rows["steps"] - 1).sum()
    assert trace.groupby("turn")["emitted"].sum().tolist() == (rows["new_tokens"] - 1).tolist()
    info = json.loads((tmp_path / "run.json").read_text())
    assert info["config_hash"] == rows["config_hash"][0] and info["config"]["gamma"] == 3
    assert {"torch", "transformers", "python"} <= set(info["versions"])
    assert info["device"] and info["finished"] and info["seed"] == 0


def test_a_completed_config_is_not_run_again(tmp_path, data_dir, capsys):
    run(tmp_path, data_dir, "bandit=none")
    marker = (tmp_path / "done").stat().st_mtime_ns
    # The autoregressive baseline reads no gamma: same config hash, so nothing to do.
    runner.main(compose(data_dir, "bandit=none", "gamma=7"), tmp_path / "again", tmp_path)
    assert "skipping: the same settings" in capsys.readouterr().out
    assert (tmp_path / "done").stat().st_mtime_ns == marker and not (tmp_path / "again").exists()


def test_bad_data_fails_before_any_file_is_written(tmp_path, data_dir):
    with pytest.raises(ValueError, match="nope.jsonl not found: set data_dir"):
        runner.main(compose(data_dir, "dataset.file=nope.jsonl"), tmp_path / "run", tmp_path)
    assert not (tmp_path / "run").exists()
