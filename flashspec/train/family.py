"""Train the project's own model family on real text: one tokenizer, a Llama target and two Llama drafts.

Acceptance rates only mean something between models that learned the same distribution, and no model hub
is reachable, so the family is trained here, inside one hard wall-clock budget:

    corpus (corpus.py) -> held-out split by file -> tokenizer (tokenizer.py) -> token streams
      -> for each model: train until its share of the remaining time is spent -> held-out loss -> save

Every model stops on the wall clock and its cosine learning rate decays over elapsed time, so a run never
overruns `time_budget_s` by more than one optimizer step per model, unless evaluating and saving take
longer than the preset's `reserve_s`.
"""

from __future__ import annotations

import json
import math
import platform
import shutil
import sys
import tarfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import tokenizers
import torch
import torch.nn.functional as F
import transformers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from flashspec.train import corpus
from flashspec.train.tokenizer import encode_docs, train_tokenizer

KINDS = ("code", "prose")
TAR_MAX_BYTES = 15 << 20  # the files brought back from the GPU machine are capped at 16 MB each


@dataclass(frozen=True)
class ModelSpec:
    name: str  # directory name under the output folder
    hidden: int
    layers: int
    heads: int
    ffn: int
    lr: float
    share: float  # fraction of the training time this model gets


@dataclass(frozen=True)
class Preset:
    vocab_size: int
    seq_len: int
    batch_size: int  # sequences per optimizer step
    time_budget_s: float  # the whole run after imports: corpus, tokenizer, models, evaluation, saving
    reserve_s: float  # of the budget, kept for evaluating and saving (all models together)
    max_corpus_mb: float | None  # on-disk MB per kind (code, prose); None = everything on the machine
    tokenizer_train_mb: float  # text the BPE merges are learned from
    heldout_frac: float
    eval_tokens: int  # per kind and model
    warmup_steps: int
    models: tuple[ModelSpec, ...]


# bf16 bytes of all three <= 30 MB: the repo ships them, so the target is ~9M parameters, not tens of
# millions (see results/models/README.md for the trade-off).
FAMILY = (
    ModelSpec("flashspec-target", hidden=256, layers=9, heads=4, ffn=704, lr=2e-3, share=0.6),
    ModelSpec("flashspec-draft-m", hidden=192, layers=3, heads=3, ffn=512, lr=3e-3, share=0.2),
    ModelSpec("flashspec-draft-s", hidden=128, layers=2, heads=2, ffn=352, lr=3e-3, share=0.2),
)
PRESETS = {
    "h100": Preset(
        vocab_size=8192, seq_len=512, batch_size=128, time_budget_s=460, reserve_s=25, max_corpus_mb=None,
        tokenizer_train_mb=48, heldout_frac=0.02, eval_tokens=1 << 20, warmup_steps=200, models=FAMILY,
    ),
    "tiny": Preset(
        vocab_size=512, seq_len=64, batch_size=16, time_budget_s=30, reserve_s=4, max_corpus_mb=1.5,
        tokenizer_train_mb=1, heldout_frac=0.05, eval_tokens=8192, warmup_steps=2, models=(
            ModelSpec("flashspec-target", hidden=64, layers=2, heads=2, ffn=192, lr=1e-2, share=0.6),
            ModelSpec("flashspec-draft-m", hidden=48, layers=1, heads=2, ffn=128, lr=1e-2, share=0.2),
            ModelSpec("flashspec-draft-s", hidden=32, layers=1, heads=1, ffn=96, lr=1e-2, share=0.2),
        ),
    ),
}


def log(msg: str) -> None:
    print(f"[train_family] {msg}", flush=True)


# --- data --------------------------------------------------------------------------------------------


@dataclass
class Streams:
    train: np.ndarray
    heldout: dict[str, np.ndarray]  # kind -> stream


def prepare(preset: Preset, workers: int) -> tuple[PreTrainedTokenizerFast, Streams, dict]:
    """Read the corpus, split it by file, learn the tokenizer on the training split, encode everything."""
    t0 = time.monotonic()
    refs = corpus.sample(corpus.discover(), preset.max_corpus_mb)
    docs = corpus.load_all(refs, workers)
    train = [d for d in docs if not corpus.is_heldout(d.key, preset.heldout_frac)]
    heldout = [d for d in docs if corpus.is_heldout(d.key, preset.heldout_frac)]
    log(f"{len(refs)} files -> {len(train)} training and {len(heldout)} held-out documents "
        f"({time.monotonic() - t0:.0f} s)")
    tokenizer = train_tokenizer(_tokenizer_sample(train, preset.tokenizer_train_mb), preset.vocab_size,
                                model_max_length=max_positions(preset))
    log(f"tokenizer trained ({time.monotonic() - t0:.0f} s)")
    train_streams = _encode_by_kind(tokenizer, train)
    streams = Streams(np.concatenate([train_streams[k] for k in KINDS]), _encode_by_kind(tokenizer, heldout))
    for kind, stream in streams.heldout.items():
        if len(stream) <= preset.seq_len:
            raise ValueError(f"held-out {kind} text is only {len(stream)} tokens, less than one window of "
                             f"{preset.seq_len}: raise --max-corpus-mb or the preset's heldout_frac")
    stats = {
        "files": len(refs),
        "documents": {k: sum(d.kind == k for d in docs) for k in KINDS},
        "utf8_bytes": {k: sum(len(d.text.encode()) for d in docs if d.kind == k) for k in KINDS},
        "tokens": {"train": len(streams.train), **{f"train_{k}": len(train_streams[k]) for k in KINDS},
                   **{f"heldout_{k}": len(streams.heldout[k]) for k in KINDS}},
        "heldout_frac": preset.heldout_frac,
    }
    return tokenizer, streams, stats


def _encode_by_kind(tokenizer: PreTrainedTokenizerFast, docs: list[corpus.Doc]) -> dict[str, np.ndarray]:
    return {k: encode_docs(tokenizer, [d.text for d in docs if d.kind == k]) for k in KINDS}


def _tokenizer_sample(docs: list[corpus.Doc], max_mb: float) -> list[str]:
    """A hash-ordered sample of the training documents: the merges see every source, in proportion."""
    texts, left = [], max_mb * 1e6
    for doc in sorted(docs, key=lambda d: corpus.unit_hash(d.key + d.kind, "tokenizer")):
        if left <= 0:
            break
        texts.append(doc.text)
        left -= len(doc.text)
    return texts


# --- models ------------------------------------------------------------------------------------------


def max_positions(preset: Preset) -> int:
    """Room for a prompt plus its generation; RoPE runs past the seq_len windows the models trained on."""
    return 4 * preset.seq_len


def build_model(spec: ModelSpec, tokenizer: PreTrainedTokenizerFast, preset: Preset) -> LlamaForCausalLM:
    if spec.hidden % spec.heads:
        raise ValueError(f"{spec.name}: hidden={spec.hidden} is not a multiple of heads={spec.heads}")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden,
        intermediate_size=spec.ffn,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.heads,
        max_position_embeddings=max_positions(preset),
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # tied embeddings are one parameter, counted once


def _windows(stream: torch.Tensor, starts: torch.Tensor, seq_len: int) -> torch.Tensor:
    return stream[starts[:, None] + torch.arange(seq_len + 1, device=stream.device)].long()


def _loss(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    with torch.autocast(batch.device.type, dtype=torch.bfloat16, enabled=batch.device.type == "cuda"):
        logits = model(input_ids=batch[:, :-1], use_cache=False).logits
    return F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten())


def _lr(spec: ModelSpec, step: int, progress: float, warmup_steps: int) -> float:
    """Linear warm-up over steps, then cosine over elapsed time down to a tenth of the peak."""
    warmup = min(1.0, (step + 1) / warmup_steps)
    return spec.lr * warmup * (0.1 + 0.45 * (1 + math.cos(math.pi * min(progress, 1.0))))


def train_model(model: LlamaForCausalLM, spec: ModelSpec, stream: torch.Tensor, preset: Preset,
                budget_s: float, seed: int, compile_model: bool) -> dict:
    """AdamW on random windows of the stream until budget_s of wall clock is spent (at least one step)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=spec.lr, betas=(0.9, 0.95), fused=stream.device.type == "cuda",
    )
    forward = torch.compile(model) if compile_model else model
    generator = torch.Generator(stream.device).manual_seed(seed)
    n_starts = len(stream) - preset.seq_len - 1
    start = time.monotonic()
    step, loss = 0, torch.tensor(float("nan"))
    model.train()
    while (elapsed := time.monotonic() - start) < budget_s or step == 0:
        for group in optimizer.param_groups:
            group["lr"] = _lr(spec, step, elapsed / max(budget_s, 1e-9), preset.warmup_steps)
        starts = torch.randint(n_starts, (preset.batch_size,), device=stream.device, generator=generator)
        loss = _loss(forward, _windows(stream, starts, preset.seq_len))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if step % 200 == 0:
            log(f"{spec.name} step {step} loss {loss.item():.3f} ({elapsed:.0f}/{budget_s:.0f} s)")
    model.eval()
    return {"steps": step, "train_tokens": step * preset.batch_size * preset.seq_len,
            "train_time_s": round(time.monotonic() - start, 1), "final_train_loss": round(loss.item(), 4)}


@torch.no_grad()
def evaluate(model: torch.nn.Module, stream: torch.Tensor, seq_len: int, max_tokens: int,
             batch_size: int) -> dict:
    """Mean next-token loss over consecutive, non-overlapping windows of a held-out stream."""
    n_windows = max(1, min(max_tokens, len(stream) - 1) // seq_len)
    starts = torch.arange(n_windows, device=stream.device) * seq_len
    total = torch.zeros((), device=stream.device, dtype=torch.float64)
    for chunk in starts.split(batch_size):
        total += _loss(model, _windows(stream, chunk, seq_len)).double() * len(chunk)
    loss = (total / n_windows).item()
    return {"loss": round(loss, 4), "perplexity": round(math.exp(loss), 2), "tokens": n_windows * seq_len}


def save_model(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, path: Path) -> None:
    """bf16 safetensors in 4 MB shards (no tracked file over 5 MiB), plus the tokenizer, in one folder."""
    shutil.rmtree(path, ignore_errors=True)  # stale shards of an earlier run would mix into the index
    model.to(torch.bfloat16).save_pretrained(path, max_shard_size="4MB")
    tokenizer.save_pretrained(path)


# --- the run -----------------------------------------------------------------------------------------


def train_family(preset: Preset, out: Path, device: torch.device, workers: int, seed: int = 0,
                 compile_model: bool = False, tar_dir: Path | None = None) -> dict:
    """Build the whole family into `out` within preset.time_budget_s; returns (and writes) metrics.json."""
    if abs(sum(s.share for s in preset.models) - 1.0) > 1e-6:
        raise ValueError(f"model shares sum to {sum(s.share for s in preset.models)}; make them sum to 1")
    t0 = time.monotonic()
    deadline = t0 + preset.time_budget_s
    torch.manual_seed(seed)
    tokenizer, streams, corpus_stats = prepare(preset, workers)
    prep_s = time.monotonic() - t0
    log(f"prepared in {prep_s:.0f} s: {corpus_stats['tokens']}")
    if deadline - time.monotonic() <= preset.reserve_s:
        raise ValueError(f"no time left to train ({prep_s:.0f} s of {preset.time_budget_s:.0f} went to "
                         "preparing the corpus): raise --time-budget-s or lower --max-corpus-mb")
    train_stream = torch.from_numpy(streams.train.astype(np.int32)).to(device)
    heldout = {k: torch.from_numpy(s.astype(np.int32)).to(device) for k, s in streams.heldout.items()}
    out.mkdir(parents=True, exist_ok=True)
    models = {}
    for i, spec in enumerate(preset.models):
        # Recomputed per model, so a slow evaluation is paid by the models after it, not by the wall.
        shares_left = sum(s.share for s in preset.models[i:])
        reserve = preset.reserve_s * (len(preset.models) - i) / len(preset.models)
        budget = max(0.0, deadline - time.monotonic() - reserve) * spec.share / shares_left
        torch.manual_seed(seed + i)
        model = build_model(spec, tokenizer, preset).to(device)
        log(f"{spec.name}: {n_params(model) / 1e6:.2f}M params, {budget:.0f} s")
        stats = train_model(model, spec, train_stream, preset, budget, seed + i, compile_model)
        stats["heldout"] = {k: evaluate(model, s, preset.seq_len, preset.eval_tokens, preset.batch_size)
                            for k, s in heldout.items()}
        log(f"{spec.name}: {stats['steps']} steps, held-out {stats['heldout']}")
        models[spec.name] = {"params": n_params(model), "spec": asdict(spec), **stats}
        save_model(model, tokenizer, out / spec.name)
    metrics = {
        "preset": {k: v for k, v in asdict(preset).items() if k != "models"},  # models: under "models"
        "command": " ".join(sys.argv),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "tokenizers": tokenizers.__version__},
        "seed": seed,
        "wall_time_s": round(time.monotonic() - t0, 1),
        "prep_time_s": round(prep_s, 1),
        "corpus": corpus_stats,
        "tokenizer": {"vocab_size": len(tokenizer), "bos": tokenizer.bos_token, "eos": tokenizer.eos_token,
                      "pad": tokenizer.pad_token},
        "models": models,
        "target_beats_drafts": _target_beats_drafts(models),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    if tar_dir is not None:
        write_tars(out, [*(s.name for s in preset.models), "metrics.json"], tar_dir)
    log(f"done in {metrics['wall_time_s']} s -> {out}; target beats drafts: {metrics['target_beats_drafts']}")
    return metrics


def _target_beats_drafts(models: dict) -> bool:
    """Whether the first model (the target) has a lower held-out loss than every draft, on every kind."""
    target, *drafts = models.values()
    return all(target["heldout"][k]["loss"] < d["heldout"][k]["loss"] for d in drafts for k in KINDS)


def write_tars(root: Path, names: list[str], tar_dir: Path, max_bytes: int = TAR_MAX_BYTES) -> list[Path]:
    """Pack root/<names> into as few tars of at most max_bytes as the files allow (paths relative to root),
    so the run's output can be carried through a channel that caps the size of one file."""
    files = sorted(f for name in names for f in ([root / name] if (root / name).is_file()
                                                  else (root / name).rglob("*")) if f.is_file())
    groups: list[list[Path]] = [[]]
    size = tarfile.RECORDSIZE  # the end-of-archive padding
    for f in files:
        f_size = f.stat().st_size + 2 * tarfile.BLOCKSIZE  # header, padding of the last block
        if f_size + tarfile.RECORDSIZE > max_bytes:
            raise ValueError(f"{f} is {f_size} bytes, more than one tar may hold ({max_bytes}); "
                             "save it in smaller shards")
        if size + f_size > max_bytes:
            groups.append([])
            size = tarfile.RECORDSIZE
        groups[-1].append(f)
        size += f_size
    tar_dir.mkdir(parents=True, exist_ok=True)
    for stale in tar_dir.glob("flashspec-models-*.tar"):  # parts of an earlier, bigger run
        stale.unlink()
    tars = []
    for i, group in enumerate(groups):
        tars.append(tar_dir / f"flashspec-models-{i}.tar")
        with tarfile.open(tars[-1], "w") as tar:
            for f in group:
                tar.add(f, arcname=f.relative_to(root).as_posix())
    return tars
