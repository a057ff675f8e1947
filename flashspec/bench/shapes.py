"""The models the bench times: random-weight Llama shapes (timing only), their weight bytes and prompts."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import flashspec as fs
from flashspec.bench.measure import DEVICE

LLAMA3_IDS = dict(vocab_size=128256, bos_token_id=128000, eos_token_id=128001, pad_token_id=128001)
SMOLLM2_IDS = dict(vocab_size=49152, bos_token_id=1, eos_token_id=2, pad_token_id=2)
SHAPES = {
    "llama3-8b": dict(**LLAMA3_IDS, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False),
    "llama3.2-1b": dict(**LLAMA3_IDS, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                        num_attention_heads=32, num_key_value_heads=8, head_dim=64, tie_word_embeddings=True),
    "smollm2-135m": dict(**SMOLLM2_IDS, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, head_dim=64, tie_word_embeddings=True,
                         rope_theta=1e5),
}
TARGET, DRAFT, SMALL = "llama3-8b", "llama3.2-1b", "smollm2-135m"
REAL_SMOLLM2 = "smollm2-135m (real)"  # the converted checkpoint of --smollm2, when given
PROMPT_LENS = (1024, 64)  # longest first: Hugging Face sizes its static cache by the first call; both fit
CONTEXT = 1024 + 256 + 64  # every model's KV cache: the longest prompt, the new tokens, a draft's overhang
EMBED_STD, HEAD_SCALE = 32.0, 1e-4  # see random_llama


def random_llama(shape: str, seed: int = 0) -> LlamaForCausalLM:
    """A Llama of this shape with random bf16 weights on the GPU. One change leaves the cost alone and makes
    greedy decoding numerically stable: the embedding is large and an untied LM head is it shifted by one
    row, so the model continues x -> x + 1 (tied: x -> x) with a logit margin far above bf16 rounding, and
    every block shape (AR step, verification, Hugging Face) yields the same greedy tokens. Without it the
    top logits of a random model tie within rounding and the target's greedy continuation depends on the
    block shape, which the controlled-acceptance arm cannot allow."""
    config = LlamaConfig(**SHAPES[shape])
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(DEVICE):
            model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    finally:
        torch.set_default_dtype(default)
    with torch.no_grad():
        embed = model.model.embed_tokens.weight.normal_(0, EMBED_STD)
        if not config.tie_word_embeddings:
            model.lm_head.weight.copy_(embed.roll(1, dims=0) * HEAD_SCALE)
    return model


def weight_bytes(model: LlamaForCausalLM) -> int:
    """Bytes one decoding step must read: every weight once, but of an untied embedding only one row."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())  # tied weights are listed once
    if not model.config.tie_word_embeddings:
        embed = model.model.embed_tokens.weight
        total -= embed.numel() * embed.element_size()
    return total


def prompt_ids(n: int, vocab: int = LLAMA3_IDS["vocab_size"]) -> torch.Tensor:
    """n random ids far from every special token (the tiny tokenizer's eos 257, Llama 3's 128000+, SmolLM2's
    0-16): x -> x + 1 never reaches them."""
    return torch.randint(1000, min(60000, vocab - 1000), (n,), generator=torch.Generator().manual_seed(n))


def make_engine(target, tokenizer, policy: str = "none", arms=(), gamma: int = 4,
                verifier: str = "auto") -> fs.SpeculativeEngine:
    cfg = fs.FlashSpecConfig(
        target=fs.TargetConfig(device=DEVICE, dtype="bfloat16", max_context=target.max_context),
        gammas=[gamma], bandit=fs.BanditConfig(policy), verifier=verifier,
    )
    engine = fs.SpeculativeEngine(cfg, target=target, tokenizer=tokenizer, arms=list(arms))
    engine.eos_ids = set()  # timing only: every generation decodes its whole budget, a real model's too
    return engine
