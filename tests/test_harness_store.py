import os
import stat

import pandas as pd

from flashspec.harness import store


def frames(run_id: str, n: int) -> dict[str, pd.DataFrame]:
    rows = pd.DataFrame({"run_id": [run_id] * n, "prompt_id": [f"p{i}" for i in range(n)], "turn": 1})
    return {"results": rows, "arms": rows.assign(arm="a"), "trace": rows.iloc[:0]}


def test_write_atomic_replaces_whole_file_and_leaves_no_temporaries(tmp_path):
    path = tmp_path / "x.csv"
    store.write_atomic(path, "old\n")
    store.write_atomic(path, "new\n")
    assert path.read_text() == "new\n"
    assert [p.name for p in tmp_path.iterdir()] == ["x.csv"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~store.UMASK  # not mkstemp's private 0600


def test_only_marked_runs_are_complete_and_enter_the_sweep(tmp_path):
    (tmp_path / "a").mkdir()
    store.save_run(tmp_path / "a", "hash-a", frames("a", 2))
    (tmp_path / "b").mkdir()
    store.save_run(tmp_path / "b", "hash-b", frames("b", 3))
    (tmp_path / "killed").mkdir()  # a run that died before its marker: CSVs present, no `done`
    for name, frame in frames("killed", 5).items():
        store.write_table(tmp_path / "killed" / f"{name}.csv", frame)
    assert store.completed_runs(tmp_path) == {"hash-a": tmp_path / "a", "hash-b": tmp_path / "b"}
    store.rebuild_sweep(tmp_path)
    results = pd.read_csv(tmp_path / "results.csv")
    assert sorted(results["run_id"]) == ["a", "a", "b", "b", "b"]
    assert len(pd.read_csv(tmp_path / "arms.csv")) == 5
    assert list(pd.read_csv(tmp_path / "trace.csv").columns) == ["run_id", "prompt_id", "turn"]


def test_clear_done_withdraws_a_run(tmp_path):
    store.save_run(tmp_path, "h", frames("r", 1))
    assert store.completed_runs(tmp_path) == {"h": tmp_path}
    store.clear_done(tmp_path)
    assert store.completed_runs(tmp_path) == {}


def test_a_duplicated_config_enters_the_sweep_once(tmp_path):
    for run in ("a", "b"):  # e.g. two parallel jobs whose settings differ only in what neither reads
        os.mkdir(tmp_path / run)
        store.save_run(tmp_path / run, "same-hash", frames(run, 2))
    store.rebuild_sweep(tmp_path)
    assert len(pd.read_csv(tmp_path / "results.csv")) == 2


def test_sweep_tables_keep_each_value_as_written(tmp_path):
    for run, gamma in (("a", "4"), ("b", None)):  # a column with gaps must not turn 4 into 4.0
        os.mkdir(tmp_path / run)
        tables = frames(run, 1)
        tables["results"] = tables["results"].assign(gamma=gamma)
        store.save_run(tmp_path / run, f"hash-{run}", tables)
    store.rebuild_sweep(tmp_path)
    assert (tmp_path / "results.csv").read_text().splitlines()[1:] == ["a,p0,1,4", "b,p0,1,"]


def test_the_sweep_tables_are_current_until_a_run_finishes_after_them(tmp_path):
    os.mkdir(tmp_path / "a")
    store.save_run(tmp_path / "a", "hash-a", frames("a", 1))
    assert not store.sweep_current(tmp_path)  # no sweep table yet
    store.rebuild_sweep(tmp_path)
    assert store.sweep_current(tmp_path)
    os.mkdir(tmp_path / "b")
    store.save_run(tmp_path / "b", "hash-b", frames("b", 1))
    later = (tmp_path / "results.csv").stat().st_mtime_ns + 1  # coarse clocks: the marker strictly after
    os.utime(tmp_path / "b" / store.DONE, ns=(later, later))
    assert not store.sweep_current(tmp_path)
