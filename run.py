"""Measure flashspec and its baselines on prompt sets; the configuration is conf/ (python run.py --help).

    python run.py                                   # smoke run: tiny model, CPU, 3 MT-Bench questions
    python run.py -m bandit=ucb1,thompson gamma=2,4,8   # a 6-run sweep into one results.csv
    python run.py -m experiment=main_table          # a named study (conf/experiment/)

A bad input ends the run with one line saying what to fix; `--verbose` (or HYDRA_FULL_ERROR=1) shows the stack.
"""

import hydra
from omegaconf import DictConfig

from flashspec.harness import app, schema

schema.register()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    app.task(cfg)


if __name__ == "__main__":
    app.cli(main)
