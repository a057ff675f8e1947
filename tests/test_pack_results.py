"""scripts/pack_results.py: what a GPU session brings back, in one tar."""

import tarfile

from test_harness_analysis import script

from flashspec.harness import store


def test_the_tar_holds_complete_runs_and_no_weights(tmp_path):
    sweep, models = tmp_path / "smollm2_main", tmp_path / "smollm2"
    for run in ("done_run", "killed_run"):
        (sweep / run / ".hydra").mkdir(parents=True)
        (sweep / run / "results.csv").write_text("run_id\n")
        (sweep / run / ".hydra" / "config.yaml").write_text("gamma: 4\n")
    store.mark_done(sweep / "done_run", "hash")
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    (sweep / "results.csv").write_text("run_id\n")
    (models / "flashspec-eagle").mkdir(parents=True)
    (models / "flashspec-eagle" / "config.json").write_text("{}")
    (models / "flashspec-eagle" / "model.safetensors").write_bytes(b"weights")
    (models / "tau.md").write_text("tau\n")
    out = tmp_path / "out" / "pack.tar.xz"
    script("pack_results").main([str(out), str(sweep), str(models), str(tmp_path / "never_made")])
    with tarfile.open(out) as tar:
        names = set(tar.getnames())
    assert names == {"smollm2_main/multirun.yaml", "smollm2_main/results.csv", "smollm2_main/done_run/results.csv",
                     "smollm2_main/done_run/.hydra/config.yaml", "smollm2_main/done_run/done",
                     "smollm2/flashspec-eagle/config.json", "smollm2/tau.md", "pack.env.json"}


def test_an_oversized_tar_drops_the_runs_own_traces(tmp_path, monkeypatch):
    sweep = tmp_path / "sweep"
    (sweep / "run").mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    for folder in (sweep, sweep / "run"):
        (folder / "trace.csv").write_text("step\n")
    store.mark_done(sweep / "run", "hash")
    pack_results = script("pack_results")
    monkeypatch.setattr(pack_results, "LIMIT_MB", 0)  # any tar is over the limit
    pack_results.main([str(tmp_path / "p.tar.xz"), str(sweep)])
    with tarfile.open(tmp_path / "p.tar.xz") as tar:
        names = set(tar.getnames())
    assert "sweep/trace.csv" in names and "sweep/run/done" in names and "sweep/run/trace.csv" not in names
