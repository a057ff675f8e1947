"""The family's shared tokenizer: byte-level BPE (any text round-trips), trained with `tokenizers`."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
# Plain "Role: text" turns: the models never saw chat data, so the template reads like the prose they did.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ message['role'] | capitalize }}: "
    "{{ message['content'] }}\n\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)
ENCODE_BATCH_DOCS = 4096  # documents per encode_batch call: enough to keep every thread busy


def train_tokenizer(texts: Sequence[str], vocab_size: int, model_max_length: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE of vocab_size tokens (the three special tokens first) that prepends <|bos|>."""
    if vocab_size < 256 + 3:
        raise ValueError(f"vocab_size={vocab_size} is below the 256 bytes + 3 special tokens; raise it")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[BOS, EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer, length=len(texts))
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, tok.token_to_id(BOS))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, chat_template=CHAT_TEMPLATE,
        model_max_length=model_max_length,
    )


def encode_docs(tokenizer: PreTrainedTokenizerFast, texts: Sequence[str]) -> np.ndarray:
    """One uint16 stream of `<|bos|> doc <|eos|>` for every text, encoded in parallel by `tokenizers`.

    Turning ids into arrays holds the GIL, encoding does not: the next batch encodes on a helper thread
    while this one is converted."""
    if len(tokenizer) > np.iinfo(np.uint16).max + 1:
        raise ValueError(f"vocab of {len(tokenizer)} tokens does not fit uint16; use a vocab <= 65536")
    encode = tokenizer.backend_tokenizer.encode_batch_fast
    eos = np.array([tokenizer.eos_token_id], dtype=np.uint16)
    batches = [list(texts[i:i + ENCODE_BATCH_DOCS]) for i in range(0, len(texts), ENCODE_BATCH_DOCS)]
    parts = [eos[:0]]
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(encode, batches[0]) if batches else None
        for nxt in [*batches[1:], None]:
            encodings = pending.result()
            pending = pool.submit(encode, nxt) if nxt is not None else None
            for enc in encodings:
                parts += [np.array(enc.ids, dtype=np.uint16), eos]
    return np.concatenate(parts)
