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
from flashspec.train.distill import INSTRUCTIONS, corpus_streams, distill_split, prompts_of

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
    prompt_len: int = 16  # prompt tokens before the target's continuation (chat prompts: at least that many)
    corpus_mb: float = 0.3  # corpus read for the prompts (on-disk MB of each kind)
    gen_batch: int = 256  # windows the target continues at once (one batched generate)
    chat: bool = True  # chat prompts (distill.chat_prompts) where the tokenizer has a chat template
    eval_prompts: int = 4  # prompts of the held-out files, made the same way, for a quick tau afterwards


# h100: 4096 windows, generated 2048 at a time (one greedy, one sampled generate of 160 tokens), made once for
# every drafter of a scripts/train_drafters.py run: the whole run is meant to fit in 4 minutes on one GPU.
FIT = {
    "tiny": FitConfig(seq_len=48, windows=96, heldout=16, batch_size=8, lr=3e-3, max_steps=150,
                      time_budget_s=20, chat=False),
    "cpu": FitConfig(seq_len=128, windows=1024, heldout=32, batch_size=8, lr=2e-3, max_steps=5_000,
                     time_budget_s=600, prompt_len=32, corpus_mb=2),
    "h100": FitConfig(seq_len=256, windows=4096, heldout=128, batch_size=32, lr=1e-3, max_steps=20_000,
                      time_budget_s=150, prompt_len=96, corpus_mb=4, gen_batch=2048, eval_prompts=8),
}


@dataclass
class Distilled:
    """The frozen target and its self-distilled (training, held-out) windows: made once, shared by every
    drafter trained in one run."""

    target: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    windows: Tensor
    heldout: Tensor
    eval_prompts: Tensor  # [m, L] prompts of the corpus files the family holds out (never trained on)
    chat: bool  # whether the prompts are chat prompts
    seconds: float  # loading the target and making the data


def log(msg: str) -> None:
    print(f"[train_drafters] {msg}", flush=True)


def load_target(path: str, device: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The frozen target in float32 (trained drafters are saved in float32 and cast when loaded)."""
    model, tokenizer = load_hf(path, TargetConfig(model=path, device=device, dtype="float32"))
    model.requires_grad_(False)
    return model.eval(), tokenizer


def distill(target_path: str, preset: str, device: str | None, seed: int, chat: bool | None = None) -> Distilled:
    """Load the target and self-distill the FIT preset's windows from it (`chat` replaces the preset's)."""
    if preset not in FIT:
        raise ValueError(f"unknown preset {preset!r}: use one of {sorted(FIT)}")
    cfg, t0 = FIT[preset], time.monotonic()
    chat = cfg.chat if chat is None else chat
    target, tokenizer = load_target(target_path, device or ("cuda" if torch.cuda.is_available() else "cpu"))
    train_stream, heldout_stream = corpus_streams(tokenizer, cfg.corpus_mb)
    prompts = prompts_of(tokenizer, train_stream, cfg.windows + cfg.heldout, cfg.prompt_len, seed, chat)
    windows, heldout = distill_split(target, tokenizer, prompts, cfg.heldout, cfg.seq_len - cfg.prompt_len, seed,
                                     cfg.gen_batch)
    evals = prompts_of(tokenizer, heldout_stream, cfg.eval_prompts, cfg.prompt_len, seed, chat)
    chat = chat and bool(tokenizer.chat_template)
    log(f"{cfg.windows} + {cfg.heldout} self-distilled windows of {windows.shape[1]} tokens "
        f"({'chat' if chat else 'plain'} prompts) in {time.monotonic() - t0:.0f} s")
    return Distilled(target, tokenizer, windows, heldout, evals, chat, round(time.monotonic() - t0, 1))


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
                    data: Distilled, **extra: object) -> dict:
    """The JSON record saved beside a self-distilled drafter: where its data came from, the fit's statistics,
    held-out loss and top-1 agreement before and after training."""
    prompts = (f"chat prompts (the target's chat template; instructions {list(INSTRUCTIONS)}) over corpus windows"
               if data.chat else "corpus windows")
    return {
        "kind": kind, "target": target_path, "preset": preset, "seed": seed, "device": device, "lr": cfg.lr,
        "time_budget_s": cfg.time_budget_s, **extra,
        "data": {"source": f"self-distilled: {prompts} (training split) continued by the target, half greedy, "
                           "half at temperature 1", "windows": len(data.windows),
                 "heldout_windows": len(data.heldout), "seq_len": data.windows.shape[1],
                 "prompt_len": data.windows.shape[1] - (cfg.seq_len - cfg.prompt_len), "data_time_s": data.seconds},
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
                  groups: Callable[[torch.nn.Module], list[dict]] | None = None, extra: dict | None = None,
                  data: Distilled | None = None) -> dict:
    """Self-distill data from the target (or take `data`, made by `distill` for several drafters), train the
    drafter, evaluate it before and after on held-out windows, save it with its training record to `out_dir`;
    returns that record. `lr` and `time_budget_s` replace the FIT preset's when given; `groups(drafter)`: AdamW
    parameter groups for fit (default: one group of every trainable parameter); `extra`: more fields of the
    record (the drafter's shape)."""
    if preset not in FIT:
        raise ValueError(f"unknown preset {preset!r}: use one of {sorted(FIT)}")
    cfg, t0 = FIT[preset], time.monotonic()
    cfg = replace(cfg, lr=cfg.lr if lr is None else lr,
                  time_budget_s=cfg.time_budget_s if time_budget_s is None else time_budget_s)
    data = data or distill(target_path, preset, device, seed)
    target = data.target
    torch.manual_seed(seed)
    drafter, states, loss_fn, save = make(target)
    windows, heldout = states(data.windows), states(data.heldout)
    log(f"{kind}: the target's states of the windows in {time.monotonic() - t0:.0f} s")
    before_loss, before = evaluate(loss_fn, heldout, cfg.batch_size)
    drafter.train()
    params = groups(drafter) if groups else [p for p in drafter.parameters() if p.requires_grad]
    stats = fit(params, loss_fn, windows, cfg, seed)
    drafter.eval()
    after_loss, after = evaluate(loss_fn, heldout, cfg.batch_size)
    trained = sum(p.numel() for p in drafter.parameters() if p.requires_grad)
    record = training_record(kind, target_path, preset, seed, str(target.device), cfg, stats,
                             (before_loss, before), (after_loss, after), t0, data, **(extra or {}), params=trained)
    save(out_dir, record, heldout)
    log(f"{kind}: held-out top-1 agreement {record['heldout_top1_agreement']} "
        f"(untrained {record['heldout_top1_agreement_before']}) -> {out_dir}")
    return record
