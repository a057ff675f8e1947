"""What the trainers of drafters on the target's states share: the frozen target, the self-distillation data
of flashspec/train/distill.py (corpus prompts continued by the target itself, so the drafter learns the
distribution it will be verified against), a time-boxed AdamW loop and a held-out evaluation."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from flashspec.config import TargetConfig
from flashspec.models import load_hf
from flashspec.train.distill import distill_split

# One training step: a batch of windows -> (loss to minimise, per-position agreement metrics).
LossFn = Callable[[Tensor, torch.Generator], tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class FitConfig:
    seq_len: int  # tokens per self-distilled window
    windows: int  # training windows the target generates
    heldout: int  # held-out windows, generated the same way
    batch_size: int
    lr: float
    max_steps: int
    time_budget_s: float  # training stops at max_steps or here, whichever comes first
    prompt_len: int = 16  # corpus tokens before the target's continuation in each window
    corpus_mb: float = 0.3  # corpus read for the prompts (on-disk MB of each kind)


FIT = {
    "tiny": FitConfig(seq_len=48, windows=96, heldout=16, batch_size=8, lr=3e-3, max_steps=150,
                      time_budget_s=20),
    "cpu": FitConfig(seq_len=128, windows=1024, heldout=32, batch_size=8, lr=2e-3, max_steps=5_000,
                     time_budget_s=600, prompt_len=32, corpus_mb=2),
    "h100": FitConfig(seq_len=256, windows=8192, heldout=128, batch_size=32, lr=1e-3, max_steps=20_000,
                      time_budget_s=150, prompt_len=64, corpus_mb=4),
}


def log(msg: str) -> None:
    print(f"[train_drafters] {msg}", flush=True)


def load_target(path: str, device: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The frozen target in float32 (trained drafters are saved in float32 and cast when loaded)."""
    model, tokenizer = load_hf(path, TargetConfig(model=path, device=device, dtype="float32"))
    model.requires_grad_(False)
    return model.eval(), tokenizer


def fit(params: list[Tensor] | list[dict], loss_fn: LossFn, windows: Tensor, cfg: FitConfig, seed: int) -> dict:
    """AdamW until max_steps or the time budget, whichever comes first; the learning rate decays on a
    cosine to a tenth over that same progress, so a run cut by the clock still ends annealed. `params` may
    be AdamW parameter groups; a group's "lr_scale" (default 1) multiplies cfg.lr for it."""
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    start, step, loss = time.monotonic(), 0, torch.tensor(float("nan"))
    curve = []  # (step, that batch's training loss) every 100 steps: still falling when the clock stops?

    def progress() -> float:
        return max(step / cfg.max_steps, (time.monotonic() - start) / cfg.time_budget_s)

    while step == 0 or progress() < 1:
        decay = 0.1 + 0.45 * (1 + math.cos(math.pi * min(progress(), 1.0)))
        for group in optimizer.param_groups:
            group["lr"] = group.get("lr_scale", 1.0) * cfg.lr * decay
        rows = torch.randint(len(windows), (cfg.batch_size,), generator=generator)
        batch = windows[rows.to(windows.device)]
        loss, _ = loss_fn(batch, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]], 1.0)
        optimizer.step()
        step += 1
        if step % 100 == 0:
            curve.append([step, round(loss.item(), 4)])
            log(f"step {step} loss {loss.item():.4f} ({time.monotonic() - start:.0f} s)")
    return {"steps": step, "train_time_s": round(time.monotonic() - start, 1),
            "final_train_loss": round(loss.item(), 4), "train_loss_curve": curve}


@torch.no_grad()
def evaluate(loss_fn: LossFn, windows: Tensor, batch_size: int, seed: int = 0) -> tuple[float, list[float]]:
    """Mean loss and mean agreement metrics over held-out windows."""
    generator = torch.Generator().manual_seed(seed)
    losses, metrics = [], []
    for batch in windows.split(batch_size):
        loss, metric = loss_fn(batch, generator)
        losses.append(loss.item())
        metrics.append(metric)
    return sum(losses) / len(losses), torch.stack(metrics).mean(0).tolist()


def training_record(kind: str, target_path: str, preset: str, seed: int, device: str, cfg: FitConfig, stats: dict,
                    before: tuple[float, list[float]], after: tuple[float, list[float]], t0: float,
                    **extra: object) -> dict:
    """The JSON record saved beside a self-distilled drafter: where its data came from, the fit's statistics,
    held-out loss and top-1 agreement before and after training."""
    return {
        "kind": kind, "target": target_path, "preset": preset, "seed": seed, "device": device, "lr": cfg.lr,
        "time_budget_s": cfg.time_budget_s, **extra,
        "data": {"source": "self-distilled: corpus windows (training split) continued by the target, half "
                           "greedy, half at temperature 1", "windows": cfg.windows,
                 "heldout_windows": cfg.heldout, "seq_len": cfg.seq_len, "prompt_len": cfg.prompt_len},
        **stats, "heldout_loss_before": round(before[0], 4), "heldout_loss": round(after[0], 4),
        "heldout_top1_agreement_before": [round(a, 4) for a in before[1]],
        "heldout_top1_agreement": [round(a, 4) for a in after[1]],
        "wall_time_s": round(time.monotonic() - t0, 1),
    }


# make(target) -> the drafter module; what it trains on per window (a function of the windows, computed once:
# the target's states, so training steps run no target forward); its loss over those; how to save it, given the
# training record and the held-out states (for what a checkpoint derives from them, e.g. Medusa's tree).
Maker = Callable[
    [PreTrainedModel],
    tuple[torch.nn.Module, Callable[[Tensor], Tensor], LossFn, Callable[[str, dict, Tensor], object]],
]


def train_drafter(kind: str, make: Maker, target_path: str, out_dir: str, preset: str, device: str | None,
                  seed: int, lr: float | None = None, time_budget_s: float | None = None,
                  groups: Callable[[torch.nn.Module], list[dict]] | None = None, extra: dict | None = None) -> dict:
    """Self-distill data from the target, train the drafter, evaluate it before and after on held-out
    windows, save it with its training record to `out_dir`; returns that record. `lr` and `time_budget_s`
    replace the FIT preset's when given; `groups(drafter)`: AdamW parameter groups for fit (default: one group
    of every trainable parameter); `extra`: more fields of the record (the drafter's shape)."""
    if preset not in FIT:
        raise ValueError(f"unknown preset {preset!r}: use one of {sorted(FIT)}")
    cfg, t0 = FIT[preset], time.monotonic()
    cfg = replace(cfg, lr=cfg.lr if lr is None else lr,
                  time_budget_s=cfg.time_budget_s if time_budget_s is None else time_budget_s)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    target, tokenizer = load_target(target_path, device)
    torch.manual_seed(seed)
    drafter, states, loss_fn, save = make(target)
    windows, heldout = distill_split(target, tokenizer, cfg.windows, cfg.heldout, cfg.seq_len, seed,
                                     cfg.prompt_len, cfg.corpus_mb)
    windows, heldout = states(windows), states(heldout)
    log(f"{kind}: {cfg.windows} + {cfg.heldout} self-distilled windows in {time.monotonic() - t0:.0f} s")
    before_loss, before = evaluate(loss_fn, heldout, cfg.batch_size)
    drafter.train()
    params = groups(drafter) if groups else [p for p in drafter.parameters() if p.requires_grad]
    stats = fit(params, loss_fn, windows, cfg, seed)
    drafter.eval()
    after_loss, after = evaluate(loss_fn, heldout, cfg.batch_size)
    trained = sum(p.numel() for p in drafter.parameters() if p.requires_grad)
    record = training_record(kind, target_path, preset, seed, device, cfg, stats, (before_loss, before),
                             (after_loss, after), t0, **(extra or {}), params=trained)
    save(out_dir, record, heldout)
    log(f"{kind}: held-out top-1 agreement {record['heldout_top1_agreement']} "
        f"(untrained {record['heldout_top1_agreement_before']}) -> {out_dir}")
    return record
