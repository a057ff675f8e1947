"""Self-distillation data from real text: what the target itself writes after windows of the family's corpus.

A drafter is verified against the target, so it learns from the target's own output. The prompts are
windows of the training split of the corpus the family learned from (flashspec/train/corpus.py; never the
benchmark prompts); the target continues each, greedily for half of them and at temperature 1 for the other
half (both decoding modes are evaluated). One more forward over every finished window caches the target's
last hidden state at each position: the features a drafter on the target's states (Medusa) reads, and, put
through the target's lm_head, its teacher distributions.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from flashspec.train import corpus

# Corpus files the family may hold out for its own evaluation (its presets hold out <= 5 %): never prompts.
FAMILY_HELDOUT_FRAC = 0.05


def corpus_prompts(
    tokenizer: PreTrainedTokenizerBase, n: int, length: int, seed: int, max_mb: float
) -> Tensor:
    """[n, length] random token windows of the corpus's training split (max_mb on-disk MB of each kind)."""
    refs = corpus.sample(corpus.discover(), max_mb)
    docs = [d for d in corpus.load_all(refs, os.cpu_count() or 1)
            if not corpus.is_heldout(d.key, FAMILY_HELDOUT_FRAC)]
    # Whole documents, longer than the model's context: only windows of them are used (no length warning).
    ids = tokenizer([d.text for d in docs], add_special_tokens=False, verbose=False)["input_ids"]
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    stream = torch.from_numpy(np.concatenate([np.asarray(i + eos, dtype=np.int64) for i in ids if i]))
    if len(stream) <= length:
        raise ValueError(f"the corpus sample has {len(stream)} tokens, fewer than one prompt of {length}: "
                         "raise max_corpus_mb")
    starts = torch.randint(len(stream) - length, (n,), generator=torch.Generator().manual_seed(seed))
    return stream[starts[:, None] + torch.arange(length)]


@torch.no_grad()
def distill_windows(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, n: int, seq_len: int, seed: int,
    prompt_len: int, max_mb: float, chunk: int = 256,
) -> Tensor:
    """[n, seq_len] windows: prompt_len corpus tokens, then the target's own continuation (the first half
    of the windows greedy, the rest sampled at temperature 1; EOS is suppressed so every row is full)."""
    if not 0 < prompt_len < seq_len:
        raise ValueError(f"prompt_len={prompt_len} must be in (0, seq_len={seq_len})")
    prompts = corpus_prompts(tokenizer, n, prompt_len, seed, max_mb).to(model.device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    devices = [model.device] if model.device.type == "cuda" else []
    out = []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for rows in torch.arange(n).split(chunk):
            greedy = rows < n // 2
            for mode, rows_of_mode in ((True, rows[greedy]), (False, rows[~greedy])):
                if len(rows_of_mode) == 0:
                    continue
                batch = prompts[rows_of_mode.to(model.device)]
                sampled = {} if mode else {"temperature": 1.0, "top_k": 0, "top_p": 1.0}
                new = seq_len - prompt_len
                out.append(model.generate(
                    input_ids=batch, attention_mask=torch.ones_like(batch), do_sample=not mode,
                    max_new_tokens=new, min_new_tokens=new, pad_token_id=pad, **sampled,
                ))
    return torch.cat(out)


@torch.no_grad()
def target_hidden(model: PreTrainedModel, windows: Tensor, chunk: int = 64) -> Tensor:
    """[n, seq_len, D]: the target's last hidden state (after the final norm, as `Scores.hidden`)."""
    return torch.cat([model(input_ids=w, output_hidden_states=True).hidden_states[-1]
                      for w in windows.split(chunk)])


def distill_split(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, n_train: int, n_heldout: int, seq_len: int,
    seed: int, prompt_len: int, max_mb: float,
) -> tuple[Tensor, Tensor]:
    """(training, held-out) windows from one `distill_windows` call (it reads the corpus) and a random split,
    so both parts mix greedy and sampled continuations."""
    data = distill_windows(model, tokenizer, n_train + n_heldout, seq_len, seed, prompt_len, max_mb)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed)).to(data.device)
    return data[order[n_heldout:]], data[order[:n_heldout]]
