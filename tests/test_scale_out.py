"""Scale-out through existing engines: the GPU pool behind the joblib launcher (no two live workers share a
GPU, a dead worker's GPUs come back), a real 2-job parallel sweep, the SLURM launcher's composition, and a
target loaded with device_map=auto."""

import json
import multiprocessing
import os
import queue
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import child_environment
from filelock import FileLock, Timeout
from omegaconf import OmegaConf

from flashspec import FlashSpecConfig, SpeculativeEngine, TargetConfig
from flashspec.harness import gpus, schema
from flashspec.models import HFModel, NativeLlama, load_model
from flashspec.models.tiny import tiny_model, tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]
FORK = multiprocessing.get_context("fork")  # cheap children that already imported everything


def worker(pool, lock_dir, out) -> None:
    """A launcher worker: claims GPUs, reports them, and holds them until it is killed."""
    out.put((os.getpid(), gpus.claim(pool, lock_dir, poll_s=0.05)))
    time.sleep(120)


def start(pool, lock_dir, out):
    proc = FORK.Process(target=worker, args=(pool, lock_dir, out), daemon=True)
    proc.start()
    return proc


def kill(*procs) -> None:
    """SIGKILL, as a crash would: nothing in the worker gets to release its locks."""
    for proc in procs:
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()


def test_live_workers_never_share_a_gpu_and_a_dead_workers_gpu_is_reused(tmp_path):
    pool, out = gpus.slots(["0", "1"], 1), FORK.Queue()
    first, second = start(pool, tmp_path, out), start(pool, tmp_path, out)
    claims = dict(out.get(timeout=30) for _ in range(2))
    assert sorted(map(tuple, claims.values())) == [("0",), ("1",)]
    third = start(pool, tmp_path, out)  # every slot is taken: it must wait, not double up
    with pytest.raises(queue.Empty):
        out.get(timeout=1.0)
    kill(first)  # the kernel drops a dead process's locks
    pid, got = out.get(timeout=30)
    assert pid == third.pid and got == claims[first.pid]
    kill(second, third)


def test_a_slot_is_claimed_whole_or_not_at_all(tmp_path):
    pool = gpus.slots(["0", "1", "2", "3"], 2)
    assert pool == [["0", "1"], ["2", "3"]]
    busy = FileLock(str(tmp_path / "gpu-1.lock"))  # someone else holds GPU 1
    busy.acquire()
    out = FORK.Queue()
    proc = start(pool, tmp_path, out)
    assert out.get(timeout=30)[1] == ["2", "3"]
    FileLock(str(tmp_path / "gpu-0.lock")).acquire(timeout=0)  # the failed attempt on slot 0 let GPU 0 go
    with pytest.raises(Timeout):
        FileLock(str(tmp_path / "gpu-2.lock")).acquire(timeout=0)
    kill(proc)


def test_pool_sizes_and_errors(monkeypatch):
    monkeypatch.setenv("FLASHSPEC_GPUS", "3,5,7")
    assert gpus.visible_gpus() == ["3", "5", "7"] and gpus.gpu_slots(1) == 3 and gpus.gpu_slots(2) == 1
    with pytest.raises(ValueError, match="per_job"):
        gpus.gpu_slots(4)
    with pytest.raises(ValueError, match="use 1 or more"):
        gpus.slots(["0"], 0)
    cfg = schema.compose("hydra/launcher=joblib_gpus", "hydra.callbacks.gpu_pool.per_job=3", hydra=True)
    assert cfg.hydra.launcher.n_jobs == 1 and cfg.hydra.callbacks.gpu_pool.gpus == "3,5,7"


def test_two_job_sweep_through_the_joblib_launcher(tmp_path):
    """Two runs in parallel worker processes, each with its own (pretend) GPU; the sweep CSV has both."""
    sweep = tmp_path / "sweep"
    env = child_environment(FLASHSPEC_GPUS="0,1", FLASHSPEC_GPU_LOCKS=str(tmp_path / "locks"))
    args = [sys.executable, str(ROOT / "run.py"), "-m", "hydra/launcher=joblib_gpus", "gamma=2,4",
            "target=tiny", "dataset.limit=1", "max_new_tokens=6", "warmup=0", "progress=false",
            f"hydra.sweep.dir={sweep}"]
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in done.stdout + done.stderr
    results = pd.read_csv(sweep / "results.csv", dtype={"gamma": str})
    assert sorted(results["gamma"].unique()) == ["2", "4"] and results["matches_baseline"].all()
    infos = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/run.json"))]
    assert len(infos) == 2 and {i["cuda_visible_devices"] for i in infos} == {"0", "1"}


def test_slurm_launcher_composes_with_the_clusters_settings(monkeypatch):
    monkeypatch.setenv("SLURM_PARTITION", "gpu-long")
    cfg = schema.compose("hydra/launcher=slurm", "experiment=main_table", "hardware=cuda", hydra=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"].endswith("submitit_launcher.SlurmLauncher")
    assert launcher["partition"] == "gpu-long" and launcher["gpus_per_node"] == 1
    assert launcher["submitit_folder"].startswith("outputs/experiments/main_table/")
    monkeypatch.delenv("SLURM_PARTITION")
    assert schema.compose("hydra/launcher=slurm", hydra=True).hydra.launcher.partition is None


def test_llama3_70b_config_spreads_the_target_over_gpus():
    typed = OmegaConf.to_object(schema.compose("target=llama3_70b", "hardware=cuda"))
    engine = schema.engine_config(typed)
    assert engine.target.device_map == "auto" and engine.target.dtype == "bfloat16"
    assert "70B" in engine.target.model and engine.arms[-1].model == typed.draft_model


def test_device_map_auto_loads_through_transformers_and_decodes_the_same(tmp_path):
    tokenizer = tiny_tokenizer()
    tiny_model("tiny", len(tokenizer)).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    spread, _ = load_model(str(tmp_path), TargetConfig(model=str(tmp_path), device_map="auto"))
    native, _ = load_model(str(tmp_path), TargetConfig(model=str(tmp_path)))
    assert isinstance(spread, HFModel) and isinstance(native, NativeLlama)  # the native path is one device
    cfg = FlashSpecConfig(target=TargetConfig(model=str(tmp_path), device_map="auto"))
    out = SpeculativeEngine(cfg).generate("Spread me over GPUs.", max_new_tokens=12)
    ref = SpeculativeEngine(FlashSpecConfig(target=TargetConfig(model=str(tmp_path)))).generate(
        "Spread me over GPUs.", max_new_tokens=12)
    assert out.token_ids == ref.token_ids
