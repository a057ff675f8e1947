"""Hydra glue: where a run writes, and the summary printed when a multirun ends."""

from __future__ import annotations

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from flashspec.harness import runner
from flashspec.harness.analysis import read_table


def task(cfg: DictConfig) -> None:
    """Run the composed config in Hydra's output directory; a multirun's runs share the sweep directory."""
    hydra = HydraConfig.get()
    run_dir = Path(hydra.runtime.output_dir)
    root = Path(hydra.sweep.dir) if hydra.mode == RunMode.MULTIRUN else run_dir
    runner.main(cfg, run_dir, root, dict(hydra.runtime.choices))


class SweepSummary(Callback):
    """One table over all complete runs of the sweep, printed after the last job."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        path = Path(config.hydra.sweep.dir) / "results.csv"
        if not path.is_file():
            print(f"no complete runs in {path.parent}")
            return
        print(f"\nsweep summary{runner.summary_text(read_table(path), path.parent)}")
