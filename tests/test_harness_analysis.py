import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flashspec.harness.analysis import ORACLE, arm_share, labelled, regret, regret_curve, summarize, with_oracle
from flashspec.harness.runner import COLUMNS

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def results(rows: list[dict]) -> pd.DataFrame:
    """Result rows with neutral defaults for the columns a test does not care about."""
    defaults = {"method": "flashspec", "target": "tiny", "arm_set": "both", "gamma": "4", "temperature": 0.0,
                "top_k": 0, "top_p": 1.0, "seed": 0, "max_new_tokens": 8, "dataset": "d", "turn": 1,
                "fixed_arm": None, "new_tokens": 8, "tau": 2.0, "alpha": 0.5, "baseline_new_tokens": 8}
    frame = pd.DataFrame([defaults | r for r in rows])
    frame["tokens_per_s"] = frame["new_tokens"] / frame["wall_time_s"]
    frame["baseline_tokens_per_s"] = frame["baseline_new_tokens"] / frame["baseline_wall_time_s"]
    return frame.assign(speedup=frame["tokens_per_s"] / frame["baseline_tokens_per_s"])


def fixed(run: str, arm: str, prompt: str, wall: float) -> dict:
    return {"run_id": run, "bandit": "fixed", "fixed_arm": arm, "prompt_id": prompt, "wall_time_s": wall,
            "baseline_wall_time_s": 1.0}


def test_oracle_is_the_fastest_fixed_arm_of_each_prompt():
    frame = results([fixed("A", "a", "p1", 0.5), fixed("A", "a", "p2", 2.0),
                     fixed("B", "b", "p1", 1.0), fixed("B", "b", "p2", 0.25),
                     {"run_id": "U", "bandit": "ucb1", "prompt_id": "p1", "wall_time_s": 9.0,
                      "baseline_wall_time_s": 1.0}])
    oracle = with_oracle(frame).query("method == @ORACLE").set_index("prompt_id")
    assert oracle.loc["p1", "wall_time_s"] == 0.5 and oracle.loc["p2", "wall_time_s"] == 0.25
    assert oracle.loc["p2", "speedup"] == pytest.approx(4.0)
    assert with_oracle(frame[frame.bandit == "ucb1"]).equals(frame[frame.bandit == "ucb1"])  # no fixed runs


def test_summary_throughput_is_total_tokens_over_total_time():
    common = {"run_id": "r", "bandit": "ucb1", "baseline_wall_time_s": 2.0}
    frame = results([
        common | {"prompt_id": "p1", "new_tokens": 10, "wall_time_s": 1.0, "baseline_new_tokens": 10},
        common | {"prompt_id": "p2", "new_tokens": 30, "wall_time_s": 3.0, "baseline_new_tokens": 30},
    ])
    row = summarize(frame, ["method", "bandit"]).iloc[0]
    assert row["rows"] == 2 and row["tok/s"] == pytest.approx(10.0) and row["AR tok/s"] == pytest.approx(10.0)
    assert row["speedup"] == pytest.approx(1.0)


def test_labels_name_baselines_policies_and_fixed_arms():
    frame = results([{"run_id": "1", "bandit": "none", "wall_time_s": 1, "baseline_wall_time_s": 1},
                     {"run_id": "2", "bandit": "ucb1", "wall_time_s": 1, "baseline_wall_time_s": 1},
                     {**fixed("3", "prompt_lookup", "p", 1.0)},
                     {"run_id": "4", "method": "hf_static", "bandit": None, "wall_time_s": 1,
                      "baseline_wall_time_s": 1},
                     {"run_id": "5", "bandit": "ucb1", "bandit_scope": "run", "wall_time_s": 1,
                      "baseline_wall_time_s": 1}])
    assert list(labelled(frame)["label"]) == [
        "autoregressive", "ucb1 (both), γ=4", "fixed prompt_lookup, γ=4", "hf_static",
        "ucb1 across prompts (both), γ=4"]


def trace(arms: list[str], emitted: list[int], run: str = "r") -> pd.DataFrame:
    return pd.DataFrame({"run_id": run, "prompt_id": "p", "turn": 1, "step": range(1, len(arms) + 1),
                         "arm": arms, "emitted": emitted})


def test_regret_counts_the_gap_to_the_best_arm_of_the_request():
    out = regret(trace(["a", "b", "a", "b"], [3, 1, 3, 1]))
    assert list(out["cumulative_regret"]) == [0, 2, 2, 4]
    assert list(regret(trace(["a"] * 3, [2, 1, 3]))["cumulative_regret"]) == [0, 0, 0]


def test_mean_regret_curve_never_falls_when_short_requests_end():
    long = trace(["a", "b", "b", "a", "a"], [3, 1, 1, 3, 3])  # cumulative regret 0, 2, 4, 4, 4
    short = trace(["a", "b", "b"], [5, 1, 1]).assign(prompt_id="q")  # 0, 4, 8: ends early, with more regret
    plain = regret(pd.concat([long, short])).groupby("step")["cumulative_regret"].mean()
    assert plain.tolist() == [0, 3, 6, 4, 4]  # what the figure used to show: a fall once `q` ends
    mean = regret_curve(pd.concat([long, short])).groupby("step")["cumulative_regret"].mean()
    assert mean.tolist() == [0, 3, 6, 6, 6]
    # Pooled over runs (one figure line per method over several prompt sets): a shorter run's requests too.
    pooled = regret_curve(pd.concat([long, short.assign(run_id="s")])).groupby("step")["cumulative_regret"]
    assert pooled.mean().tolist() == [0, 3, 6, 6, 6]


def test_arm_share_fills_unplayed_arms_with_zero():
    share = arm_share(pd.concat([trace(["a", "a", "b", "b"], [1] * 4), trace(["c"] * 4, [1] * 4, run="s")]),
                      bins=2)
    assert share.groupby(["run_id", "phase"])["share"].sum().eq(1).all()
    first = share[(share.run_id == "r") & (share.phase == 0.25)].set_index("arm")["share"]
    assert first.to_dict() == {"a": 1.0, "b": 0.0}
    assert set(share[share.run_id == "s"]["arm"]) == {"c"}  # no other run's arms


def sweep_dir(tmp_path: Path) -> Path:
    """A small synthetic sweep: two fixed arms, a bandit over them and the baseline, on two datasets."""
    rng = np.random.default_rng(0)
    rows, traces = [], []
    for dataset in ("d1", "d2"):
        for p in range(4):
            prompt = f"{dataset}/{p}"
            for run, bandit, arm in [("fa", "fixed", "a"), ("fb", "fixed", "b"), ("u", "ucb1", None),
                                     ("ar", "none", None)]:
                wall = 1.0 if bandit == "none" else rng.uniform(0.2, 1.0)  # the baseline times itself
                rows.append({"run_id": run, "bandit": bandit, "fixed_arm": arm, "dataset": dataset,
                             "prompt_id": prompt, "wall_time_s": wall, "baseline_wall_time_s": 1.0,
                             "gamma": None if bandit == "none" else "4"})
            arms = rng.choice(["a", "b"], size=12)
            emitted = [3 if a == "a" else 1 for a in arms]
            traces.append(trace(list(arms), emitted, run="u").assign(prompt_id=prompt))
    frame = results(rows).reindex(columns=COLUMNS["results"])
    frame.to_csv(tmp_path / "results.csv", index=False)
    pd.DataFrame(columns=COLUMNS["arms"]).to_csv(tmp_path / "arms.csv", index=False)
    pd.concat(traces).to_csv(tmp_path / "trace.csv", index=False)
    return tmp_path


def test_tables_have_a_row_per_method_and_a_column_per_dataset(tmp_path):
    out = tmp_path / "tables"
    script("make_tables").main(sweep_dir(tmp_path), out)
    caption, blank, *lines = (out / "speedup.md").read_text().splitlines()
    assert "total new tokens over total time" in caption and "per-prompt" in caption and not blank
    assert lines[0] == "| method | d1 | d2 |"
    assert {line.split(" | ")[0][2:] for line in lines[2:]} == {
        "autoregressive", "fixed a, γ=4", "fixed b, γ=4", "ucb1 (both), γ=4", ORACLE}
    tex = (out / "speedup.tex").read_text()
    assert r"ucb1 (both), $\gamma$=4" in tex and r"\label{tab:speedup}" in tex
    assert "autoregressive & 1.00 & 1.00" in tex.replace(r" \\", "")


def test_a_compressed_trace_reads_as_the_plain_one(tmp_path):
    from flashspec.harness.analysis import load

    sweep = sweep_dir(tmp_path)
    plain = load(sweep)
    trace = sweep / "trace.csv"
    pd.read_csv(trace).to_csv(sweep / "trace.csv.gz", index=False)
    trace.unlink()
    pd.testing.assert_frame_equal(load(sweep).trace, plain.trace)
    (sweep / "trace.csv.gz").unlink()
    with pytest.raises(ValueError, match="has no trace.csv"):
        load(sweep)


def test_scripts_write_into_the_sweep_unless_told_and_the_paper_only_from_committed_studies(tmp_path, capsys):
    sweep = sweep_dir(tmp_path)
    written = script("make_tables").main(sweep, sweep / "tables")
    assert written and all(p.parent == sweep / "tables" for p in written)
    assert f"written to {sweep / 'tables'}" in capsys.readouterr().out
    paper = script("make_paper")
    main_tex = (paper.PAPER / "main.tex").read_text()
    for study, sub in paper.STUDIES.items():
        assert any((paper.ROOT / study / name).is_file() for name in ("results.csv", "results.csv.gz")), study
        assert f"tables/{sub + '/' if sub else ''}speedup.tex" in main_tex
