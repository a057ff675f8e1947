"""Hydra glue: where a run writes, a failed run's folder removed, errors as one line, and the summary printed
when a multirun ends."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from flashspec.harness import runner, store
from flashspec.harness.analysis import read_table

VERBOSE = "--verbose"
VERBOSE_ENV = "FLASHSPEC_VERBOSE"  # set by cli() for this process and the launcher's workers


def task(cfg: DictConfig) -> None:
    """Run the composed config in Hydra's output directory; a multirun's runs share the sweep directory."""
    hydra = HydraConfig.get()
    run_dir = Path(hydra.runtime.output_dir)
    root = Path(hydra.sweep.dir) if hydra.mode == RunMode.MULTIRUN else run_dir
    try:
        runner.main(cfg, run_dir, root, dict(hydra.runtime.choices))
        if root != run_dir:  # a skipped job leaves no folder (a sweep's product skips most of its jobs)
            discard(run_dir, root)
    except BaseException as err:
        discard(run_dir, root)
        # A single run ends here, before Hydra adds its own line; a sweep's jobs report through the launcher.
        if hydra.mode == RunMode.RUN and isinstance(err, Exception) and os.environ.get(VERBOSE_ENV) != "1":
            raise SystemExit(message(err)) from err
        raise


def discard(run_dir: Path, root: Path) -> None:
    """A failed run leaves no folder that could pass for a result (Hydra made it, with .hydra/ and run.log,
    before the run began); nor does a sweep folder that none of its runs got into."""
    if (run_dir / store.DONE).is_file():
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    if root != run_dir and root.is_dir() and {p.name for p in root.iterdir()} <= {"multirun.yaml", ".sweep.lock"}:
        shutil.rmtree(root, ignore_errors=True)


def cli(main: Callable[[], None]) -> None:
    """run.py's entry: a bad input is one line on stderr and exit status 1; `--verbose` or HYDRA_FULL_ERROR=1
    shows the stack instead."""
    verbose = VERBOSE in sys.argv or os.environ.get("HYDRA_FULL_ERROR") == "1"
    sys.argv = [a for a in sys.argv if a != VERBOSE]
    os.environ[VERBOSE_ENV] = "1" if verbose else "0"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises (in its own workers too) instead of printing a stack
    try:
        main()
    except Exception as err:
        if verbose:
            raise
        sys.exit(message(err))


def message(err: Exception) -> str:
    return f"error: {one_line(err)} (--verbose shows where)"


def one_line(err: Exception) -> str:
    """The first line of an error, with the fix Hydra puts on its later lines for override mistakes."""
    if isinstance(err, ConfigCompositionException | MissingConfigException | OverrideParseException):
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        return " ".join(lines[:3])
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


class SweepSummary(Callback):
    """One table over all complete runs of the sweep, printed after the last job."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        path = Path(config.hydra.sweep.dir) / "results.csv"
        if not path.is_file():
            print(f"no complete runs in {path.parent}")
            return
        print(f"\nsweep summary{runner.summary_text(read_table(path), path.parent)}")
