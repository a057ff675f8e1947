"""Self-distillation data from real text: what the target itself writes after windows of the family's corpus.

A drafter is verified against the target, so it learns from the target's own output. The prompts are
windows of the training split of the corpus the family learned from (flashspec/train/corpus.py; never the
benchmark prompts). For an instruct model (a tokenizer with a chat template) each window becomes a user turn
behind an instruction ("Explain this code:", "Summarise:", ...) in the model's own chat format, so the
drafters learn the answers it writes in that format; otherwise the target simply continues the window. The
target continues each prompt, greedily for half of them and at temperature 1 for the other half (both
decoding modes are evaluated), in batches on the target's device. One more forward over every finished
window caches the target's last hidden state at each position: the features a drafter on the target's
states (Medusa) reads, and, put through the target's lm_head, its teacher distributions.
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
# The user turns of chat prompts: an instruction, a blank line, a corpus window (code or prose alike).
INSTRUCTIONS = ("Explain this code:", "Continue this text:", "Summarise:", "What does this do?",
                "Rewrite this more clearly:", "Answer the question this raises:")
SLOT = "\x00"  # stands for the window while the chat template is rendered; split out again
MIN_WINDOW = 8  # corpus tokens a chat prompt must hold besides its template and instruction


def corpus_streams(tokenizer: PreTrainedTokenizerBase, max_mb: float) -> tuple[Tensor, Tensor]:
    """The token streams of the corpus's training split and of the files the family holds out, from a sample
    of max_mb on-disk MB of each kind; documents end with EOS."""
    refs = corpus.sample(corpus.discover(), max_mb)
    docs = corpus.load_all(refs, os.cpu_count() or 1)
    return tuple(_stream(tokenizer, [d.text for d in docs if corpus.is_heldout(d.key, FAMILY_HELDOUT_FRAC) == held])
                 for held in (False, True))


def _stream(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> Tensor:
    # A split a small sample leaves empty (a machine short of a kind of text): transformers 5.17's fast
    # tokenizers raise IndexError on an empty batch.
    if not texts:
        return torch.empty(0, dtype=torch.long)
    # Whole documents, longer than the model's context: only windows of them are used (no length warning).
    ids = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    rows = [np.asarray(i + eos, dtype=np.int64) for i in ids if i]
    return torch.from_numpy(np.concatenate(rows)) if rows else torch.empty(0, dtype=torch.long)


def windows_of(stream: Tensor, n: int, length: int, seed: int) -> Tensor:
    """[n, length] random windows of a token stream."""
    if len(stream) <= length:
        raise ValueError(f"the corpus sample has {len(stream)} tokens, fewer than one prompt of {length}: "
                         "raise max_corpus_mb")
    starts = torch.randint(len(stream) - length, (n,), generator=torch.Generator().manual_seed(seed))
    return stream[starts[:, None] + torch.arange(length)]


def corpus_prompts(
    tokenizer: PreTrainedTokenizerBase, n: int, length: int, seed: int, max_mb: float
) -> Tensor:
    """[n, length] random token windows of the corpus's training split (max_mb on-disk MB of each kind)."""
    return windows_of(corpus_streams(tokenizer, max_mb)[0], n, length, seed)


def chat_frame(tokenizer: PreTrainedTokenizerBase, instruction: str) -> tuple[list[int], list[int]]:
    """The token ids of the chat template around a user turn `instruction` + blank line + window, split at
    the window: (before, after), the generation prompt (the assistant's turn opening) included in after."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": f"{instruction}\n\n{SLOT}"}],
                                         tokenize=False, add_generation_prompt=True)
    before, after = text.split(SLOT)
    encode = lambda part: tokenizer(part, add_special_tokens=False)["input_ids"]  # noqa: E731
    return encode(before), encode(after)


def chat_prompts(tokenizer: PreTrainedTokenizerBase, stream: Tensor, n: int, length: int, seed: int) -> Tensor:
    """[n, L] chat prompts of one length L (no padding: the windows fill the rest), L = `length`, or more where
    the chat template and the longest instruction leave fewer than MIN_WINDOW tokens of text: row i asks
    INSTRUCTIONS[i % len] about a random window of `stream`, in the tokenizer's chat format."""
    frames = [chat_frame(tokenizer, instruction) for instruction in INSTRUCTIONS]
    length = max(length, MIN_WINDOW + max(len(before) + len(after) for before, after in frames))
    rows = []
    for i in range(n):
        before, after = frames[i % len(frames)]
        window = windows_of(stream, 1, length - len(before) - len(after), seed + i)[0]
        rows.append(torch.cat([torch.tensor(before), window, torch.tensor(after)]))
    return torch.stack(rows)


def prompts_of(tokenizer: PreTrainedTokenizerBase, stream: Tensor, n: int, length: int, seed: int,
               chat: bool) -> Tensor:
    """Prompts from a corpus stream: chat prompts (at least `length` tokens) when `chat` and the tokenizer has
    a chat template, else plain windows of `length` tokens."""
    if chat and tokenizer.chat_template:
        return chat_prompts(tokenizer, stream, n, length, seed)
    return windows_of(stream, n, length, seed)


@torch.no_grad()
def distill_windows(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Tensor, new_tokens: int, seed: int,
    chunk: int = 256,
) -> Tensor:
    """[n, prompt + new_tokens] windows: each prompt, then new_tokens of the target's own continuation (the
    first half of the rows greedy, the rest sampled at temperature 1; EOS is suppressed so every row is full),
    generated `chunk` rows at a time on the target's device."""
    n, prompts = len(prompts), prompts.to(model.device)
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
                out.append(model.generate(
                    input_ids=batch, attention_mask=torch.ones_like(batch), do_sample=not mode,
                    max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=pad, **sampled,
                ))
    return torch.cat(out)


@torch.no_grad()
def target_hidden(model: PreTrainedModel, windows: Tensor, chunk: int = 64) -> Tensor:
    """[n, seq_len, D]: the target's last hidden state (after the final norm, as `Scores.hidden`), from its
    body alone (the logits of a chunk would be chunk x seq_len x vocabulary floats)."""
    return torch.cat([model.model(input_ids=w).last_hidden_state for w in windows.split(chunk)])


def distill_split(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Tensor, n_heldout: int, new_tokens: int,
    seed: int, chunk: int = 256,
) -> tuple[Tensor, Tensor]:
    """(training, held-out) windows from one `distill_windows` call and a random split, so both parts mix
    greedy and sampled continuations."""
    data = distill_windows(model, tokenizer, prompts, new_tokens, seed, chunk)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed)).to(data.device)
    return data[order[n_heldout:]], data[order[:n_heldout]]
