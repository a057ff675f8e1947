"""Result files: per-run CSVs written atomically, a `done` marker, and sweep CSVs rebuilt from finished runs.

A run directory holds run.json, results.csv (one row per prompt and turn), arms.csv (one row per prompt,
turn and arm), trace.csv (one row per prompt, turn and decoding step) and, written last, `done` holding the
run's config hash. A run is complete iff `done` exists, so a killed run leaves nothing half-counted. A sweep
directory gets the same three CSVs, the concatenation of its complete runs, replaced atomically after each
run; relaunching a sweep therefore only has to skip the hashes already marked done.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pandas as pd
from filelock import FileLock

TABLES = ("results", "arms", "trace")
DONE = "done"
UMASK = os.umask(0)
os.umask(UMASK)


def write_atomic(path: Path, text: str) -> None:
    """Write to a temporary file in the same directory, then rename: readers see the old or the new file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_table(path: Path, frame: pd.DataFrame) -> None:
    write_atomic(path, frame.to_csv(index=False))


def completed_runs(root: Path) -> dict[str, Path]:
    """Config hash -> run directory, for every complete run in `root` or its subdirectories."""
    markers = [root / DONE, *sorted(root.glob(f"*/{DONE}"))]
    return {m.read_text().strip(): m.parent for m in markers if m.is_file()}


def mark_done(run_dir: Path, config_hash: str) -> None:
    write_atomic(run_dir / DONE, config_hash + "\n")


def clear_done(run_dir: Path) -> None:
    """Before a run (re)writes its directory: a stale marker must not vouch for files being replaced."""
    (run_dir / DONE).unlink(missing_ok=True)


def save_run(run_dir: Path, config_hash: str, tables: dict[str, pd.DataFrame]) -> None:
    for name in TABLES:
        write_table(run_dir / f"{name}.csv", tables[name])
    mark_done(run_dir, config_hash)


def sweep_current(root: Path) -> bool:
    """Whether root/results.csv was rebuilt after every run's marker: a sweep's skipped jobs (over a thousand in
    experiment=smollm2_main's product) then need not re-read every run's tables."""
    table = root / "results.csv"
    markers = [m.stat().st_mtime_ns for m in root.glob(f"*/{DONE}")]
    return table.is_file() and all(t <= table.stat().st_mtime_ns for t in markers)


def rebuild_sweep(root: Path) -> None:
    """Concatenate the complete runs under `root` into root/{results,arms,trace}.csv."""
    runs = sorted(p for p in completed_runs(root).values() if p != root)
    if not runs:
        return
    with FileLock(str(root / ".sweep.lock")):  # parallel launchers finish runs concurrently
        for name in TABLES:
            # As text: a round trip through numbers would rewrite values (gamma "4" as "4.0").
            frames = [pd.read_csv(run / f"{name}.csv", dtype=str, keep_default_na=False) for run in runs]
            write_table(root / f"{name}.csv", pd.concat(frames, ignore_index=True))
