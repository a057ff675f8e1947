"""Single runs in this process: every method on a one-prompt set, and the rows they write."""

import json
import logging
import re

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from flashspec.harness import decoders, runner, schema
from flashspec.harness.runner import COLUMNS
from flashspec.harness.schema import RunConfig


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
    assert (rows["new_tokens"] > 0).all()
    ratio = rows["tokens_per_s"] / rows["baseline_tokens_per_s"]  # speedup is a ratio of rates, both recorded
    assert np.allclose(rows["speedup"], ratio) and (rows["tokens_per_s"] > 0).all()
    assert rows["matches_baseline"].all()  # greedy: transformers reproduces the engine's AR tokens
    assert rows["gamma"].notna().all() == (method in ("hf_assisted", "hf_prompt_lookup"))


def test_output_hash_names_the_tokens_and_matches_across_runs(tmp_path, data_dir):
    assert runner.output_hash([1, 23]) != runner.output_hash([12, 3]) != runner.output_hash([])
    assert runner.output_hash([5, 6]) == runner.output_hash([5, 6]) and len(runner.output_hash([5])) == 16
    ar = run(tmp_path / "ar", data_dir, "bandit=none")
    hf = run(tmp_path / "hf", data_dir, "method=hf_static")  # float32: transformers' greedy is the engine's
    assert ar["output_hash"].tolist() == hf["output_hash"].tolist() and hf["matches_baseline"].all()


def test_the_static_cache_is_sized_once_for_the_run(data_dir):
    """A cache sized per call grows on a longer prompt, and transformers' compiled decoding step recompiles
    inside the timed call: it is sized as the engine's context instead."""
    cfg = OmegaConf.to_object(compose(data_dir, "method=hf_static"))
    dec = decoders.HFDecoder(cfg)
    assert dec.kwargs["max_cache_len"] == cfg.target.max_context and dec.kwargs["cache_implementation"] == "static"
    assert "max_cache_len" not in decoders.HFDecoder(OmegaConf.to_object(compose(data_dir, "method=hf_eager"))).kwargs


def test_the_recorded_commit_comes_from_flashspec_commit_when_set(monkeypatch):
    monkeypatch.setenv(runner.COMMIT_ENV, "64cd3eb")
    assert runner.git_commit() == "64cd3eb"
    monkeypatch.setenv(runner.COMMIT_ENV, "")
    assert runner.git_commit() != "64cd3eb"  # git's own answer (or None outside a checkout)


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
    assert info["threads"] == 1  # conftest sets OMP_NUM_THREADS=1


def test_cpu_threads_are_chosen_and_recorded(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert runner.set_threads(RunConfig()) == 1  # not one per core: that oversubscribes shared cores
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert runner.set_threads(RunConfig()) == 2
    assert runner.set_threads(RunConfig(threads=3)) == 3
    torch.set_num_threads(1)


@pytest.mark.parametrize("override,message", [
    ("+max_new_token=64", "unknown setting max_new_token: did you mean max_new_tokens?"),
    ("+target.modle=x", "unknown setting target.modle: did you mean target.model?"),
    ("target.model=/no/such/path", "target.model=/no/such/path: the path does not exist"),
    ("target.model=./missing-model", "target.model=./missing-model: the path does not exist"),
])
def test_bad_settings_fail_before_any_file_is_written(tmp_path, data_dir, override, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        runner.main(compose(data_dir, override), tmp_path / "run", tmp_path)
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_cuda_device_says_to_use_the_cpu(tmp_path, data_dir):
    with pytest.raises(ValueError, match="no CUDA device found .* use hardware=cpu"):
        runner.main(compose(data_dir, "hardware=cuda"), tmp_path / "run", tmp_path)


def test_the_summary_is_rounded_and_flags_noisy_timings(tmp_path):
    from test_harness_analysis import results

    def rows(*baseline_s: float) -> pd.DataFrame:
        return results([{"run_id": "r", "bandit": "ucb1", "bandit_scope": "request", "prompt_id": f"p{i}",
                         "wall_time_s": 0.5, "baseline_wall_time_s": s} for i, s in enumerate(baseline_s)])

    text = runner.summary_text(rows(1.0, 1.1), tmp_path)  # AR tok/s: 16 tokens in 2.1 s
    assert "7.62" in text and "7.619" not in text and "warning" not in text and f"results: {tmp_path}" in text
    noisy = rows(1.0, 3.0)
    assert "warning: timings too noisy to trust" in runner.summary_text(noisy, tmp_path)
    assert runner.rounded(pd.DataFrame({"x": [1234.5678, 2.34567, 0.0123456]}))["x"].tolist() == [
        "1235", "2.35", "0.0123"]


def test_a_completed_config_is_not_run_again(tmp_path, data_dir, caplog):
    caplog.set_level(logging.DEBUG, logger="flashspec")
    run(tmp_path, data_dir, "bandit=none")
    assert f"writing to {tmp_path}" in caplog.text and f"results: {tmp_path}" in caplog.text
    assert "AR tok/s" in caplog.text and "t/1 turn 2: " in caplog.text  # the summary, per-prompt lines for run.log
    marker = (tmp_path / "done").stat().st_mtime_ns
    # The autoregressive baseline reads no gamma: same config hash, so nothing to do.
    runner.main(compose(data_dir, "bandit=none", "gamma=7"), tmp_path / "again", tmp_path)
    assert "skipping: the same settings" in caplog.text
    assert (tmp_path / "done").stat().st_mtime_ns == marker and not (tmp_path / "again").exists()


def test_bad_data_fails_before_any_file_is_written(tmp_path, data_dir):
    with pytest.raises(ValueError, match="nope.jsonl not found: set data_dir"):
        runner.main(compose(data_dir, "dataset.file=nope.jsonl"), tmp_path / "run", tmp_path)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("overrides", [("method=hf_assisted", "gamma=[2,4]"),
                                       ("method=hf_prompt_lookup", "gamma=[2,4]"),
                                       ("bandit=fixed", "bandit.arm=1", "gamma=[2,4]")])
def test_a_sweep_skips_a_gamma_list_where_one_length_is_drafted(tmp_path, data_dir, caplog, overrides):
    caplog.set_level(logging.INFO, logger="flashspec")
    runner.main(compose(data_dir, *overrides), tmp_path / "job", tmp_path)  # a sweep's job: its own folder
    assert "skipping: " in caplog.text and "drafts one length" in caplog.text and not (tmp_path / "job").exists()


def test_a_sweep_runs_a_gamma_list_a_policy_chooses_from(tmp_path, data_dir):
    cfg = OmegaConf.to_object(compose(data_dir, "bandit=ucb1", "gamma=[2,4]"))
    assert schema.not_in_sweep(cfg) is None
    assert schema.not_in_sweep(OmegaConf.to_object(compose(data_dir, "method=hf_assisted", "gamma=2"))) is None
