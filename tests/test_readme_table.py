"""scripts/readme_table.py: the README's results table comes from the result files, and says when there are
none."""

import json

import pandas as pd
import pytest
from test_harness_analysis import script

table = script("readme_table")
README = "# project\n\nintro\n\n<!-- results-table -->\nstale\n<!-- /results-table -->\n\nafter\n"


def metrics(path) -> None:
    model = {"params": 9_327_360, "train_time_s": 209.8,
             "heldout": {"code": {"loss": 1.8635}, "prose": {"loss": 2.3849}}}
    path.write_text(json.dumps({"device": "GPU-X", "wall_time_s": 412.0, "models": {"target-a": model}}))


def test_table_holds_the_measured_numbers_and_only_the_block_changes(tmp_path):
    results, readme = tmp_path / "results", tmp_path / "README.md"
    (results / "models").mkdir(parents=True)
    (results / "gpu").mkdir()
    metrics(results / "models" / "metrics.json")
    pd.DataFrame([{"shape": "llama3-8b", "prompt_tokens": 64, "impl": "flashspec", "tok_s": 180.04,
                   "frac_roofline": 0.9123, "extra": 1}]).to_csv(results / "gpu" / "ar.csv", index=False)
    runs = [("mt_bench", "ucb1", 1.734), ("humaneval", "ucb1", 2.051), ("mt_bench", "autoregressive", 1.0)]
    pd.DataFrame([{"dataset": d, "run": r, "speedup": s} for d, r, s in runs]).to_csv(
        results / "gpu" / "family.csv", index=False)
    pd.DataFrame([{"a": 1}]).to_csv(results / "gpu" / "verifier.csv", index=False)
    env = {"device": "NVIDIA H200", "commit": "abcdef1234567890"}
    (results / "gpu" / "env.json").write_text(json.dumps(env))
    readme.write_text(README)
    assert table.main(["--readme", str(readme), "--results", str(results)]) == 0
    text = readme.read_text()
    assert text.startswith("# project\n\nintro\n\n<!-- results-table -->\n") and text.endswith(
        "<!-- /results-table -->\n\nafter\n")
    assert "stale" not in text
    assert "| target-a | 9.33 M | 1.86 | 2.38 | 210 |" in text
    assert "| llama3-8b | 64 | flashspec | 180 | 91.2 |" in text
    assert "| run | humaneval | mt_bench |" in text and "| ucb1 | 2.05 | 1.73 |" in text
    assert "NVIDIA H200, commit `abcdef123456`" in text and "`verifier.csv`" in text
    assert table.main(["--readme", str(readme), "--results", str(results), "--check"]) == 0  # idempotent
    pd.DataFrame([{"dataset": "mt_bench", "run": "ucb1", "speedup": 1.5}]).to_csv(
        results / "gpu" / "family.csv", index=False)
    assert table.main(["--readme", str(readme), "--results", str(results), "--check"]) == 1
    assert readme.read_text() == text  # --check writes nothing


def test_the_real_target_heads_the_table(tmp_path):
    (tmp_path / "gpu" / "smollm2" / "tables").mkdir(parents=True)
    (tmp_path / "gpu" / "smollm2" / "tables" / "speedup.md").write_text(
        "| method | mt_bench |\n|---|---|\n| fixed prompt_lookup, γ=4 | 1.77 |\n")
    metrics((tmp_path / "models").mkdir() or tmp_path / "models" / "metrics.json")
    text = table.render(tmp_path)
    assert text.startswith("**SmolLM2-135M-Instruct, the real target") and "| fixed prompt_lookup, γ=4 | 1.77 |" in text
    assert text.index("SmolLM2-135M-Instruct") < text.index("Trained model family")


def test_missing_results_are_said_to_be_missing(tmp_path):
    text = table.replace_block(README, table.render(tmp_path))
    assert "no `results/models/metrics.json` yet" in text and "GPU decoding speed**: not measured yet" in text
    assert "SmolLM2-135M-Instruct (the real target)**: not measured yet" in text
    assert "|" not in text  # no table without numbers


def test_bad_inputs_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="results-table"):
        table.replace_block("# no markers\n", "x\n")
    (tmp_path / "gpu").mkdir()
    pd.DataFrame([{"shape": "s", "tok_s": 1.0}]).to_csv(tmp_path / "gpu" / "ar.csv", index=False)
    with pytest.raises(ValueError, match=r"ar.csv has no column\(s\) \['prompt_tokens', 'impl', 'frac_"):
        table.render(tmp_path)


def test_a_cpu_sweep_is_one_row_per_method_with_tau_and_speedup_per_prompt_set(tmp_path):
    from test_harness_analysis import results as result_rows

    sweep = tmp_path / "cpu" / "study"
    sweep.mkdir(parents=True)
    rows = [{"run_id": "1", "bandit": "none", "dataset": d, "tau": 1.0, "wall_time_s": 2.0,
             "baseline_wall_time_s": 2.0} for d in ("mt_bench", "alpaca")]
    rows += [{"run_id": "2", "bandit": "ucb1", "dataset": "mt_bench", "tau": 3.0, "wall_time_s": 1.0,
              "baseline_wall_time_s": 2.0},
             {"run_id": "2", "bandit": "ucb1", "dataset": "alpaca", "tau": 2.5, "wall_time_s": 0.5,
              "baseline_wall_time_s": 2.0}]
    result_rows(rows).to_csv(sweep / "results.csv", index=False)
    text = "\n".join(table.cpu_sections(tmp_path))
    assert "| method | alpaca τ | alpaca speedup | mt_bench τ | mt_bench speedup |" in text
    assert "| autoregressive | 1 | 1 | 1 | 1 |" in text
    assert "| ucb1 (both), γ=4 | 2.5 | 4 | 3 | 2 |" in text
