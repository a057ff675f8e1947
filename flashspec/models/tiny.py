"""Built-in models that need no download: a byte-level tokenizer and small random-weight Llamas.

They exist for tests and for checking the machinery; their acceptance rates mean nothing. The project's
trained family (results/models, made by scripts/train_family.py) is what measurements use.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIALS = ["<|bos|>", "<|eos|>", "<|pad|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|bos|>{{ m['role'] }}\n{{ m['content'] }}<|eos|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|bos|>assistant\n{% endif %}"
)
BUILTIN = ("tiny", "tiny-draft")
# hidden, layers, heads, kv heads, ffn of the built-in target
HIDDEN, LAYERS, HEADS, KV_HEADS, FFN = 128, 4, 4, 2, 256
DRAFT_NOISE = 0.05


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Bytes as tokens (no merges), so any text round-trips and the vocabulary is fixed at 256 + 3."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)} | {s: 256 + i for i, s in enumerate(SPECIALS)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=SPECIALS[0], eos_token=SPECIALS[1], pad_token=SPECIALS[2],
        chat_template=CHAT_TEMPLATE,
    )


def tiny_model(name: str, vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    """`tiny` is a random 4-layer Llama. `tiny-draft` is the same model with 5% noise on every weight: it
    agrees with the target often but not always, which is what tests of acceptance need (it is no cheaper)."""
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=4096,
        initializer_range=0.1,  # peaked logits, so float32 near-ties between top tokens are vanishingly rare
        bos_token_id=256, eos_token_id=257, pad_token_id=258, tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).eval()
        if name == "tiny-draft":
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn_like(p) * p.std() * DRAFT_NOISE)
    return model
