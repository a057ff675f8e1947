"""The layer-skip arm (the target's first k layers, its norm and head): greedy output token-identical to AR on
the shipped family, sampled output distributed as the target's, no weight copied, bad k named."""

import numpy as np
import pytest
import torch
from scipy.stats import chisquare
from transformers import LlamaConfig, LlamaForCausalLM

from flashspec import ArmConfig, BanditConfig, FlashSpecConfig, SamplingConfig, SpeculativeEngine, TargetConfig
from flashspec.arms import build_arm
from flashspec.models import load_model
from flashspec.models.native import NativeLlama

FAMILY = "results/models/flashspec-target"
PROMPTS = ["def add(a, b):\n    return", "The cat sat on the mat. The cat sat on the", "Once upon a time"]


def engine(target: TargetConfig, policy: str, k: int | None = None, gamma: int = 4) -> SpeculativeEngine:
    arms = [ArmConfig(kind="layer_skip", params={"k": k})]
    return SpeculativeEngine(FlashSpecConfig(target=target, arms=arms, gammas=[gamma], bandit=BanditConfig(policy)))


@pytest.mark.parametrize(("graphs", "k", "gamma"), [(False, None, 4), (True, 3, 2), (False, 6, 8)])
def test_greedy_layer_skip_matches_autoregressive(graphs, k, gamma):
    target = TargetConfig(model=FAMILY, cuda_graphs=graphs)
    ar, spec = engine(target, "none"), engine(target, "fixed", k, gamma)
    accepted = 0
    for prompt in PROMPTS:
        out = spec.generate(prompt, max_new_tokens=32)
        assert out.token_ids == ar.generate(prompt, max_new_tokens=32).token_ids, prompt
        accepted += sum(a.accepted for a in out.arms.values())
    assert accepted > 0  # the draft was right sometimes, so rollback after partial acceptance was exercised


def test_layer_skip_shares_the_targets_weights():
    target, tokenizer = load_model(FAMILY, TargetConfig(model=FAMILY))
    arm = build_arm(ArmConfig(kind="layer_skip"), target, tokenizer, TargetConfig())
    assert arm.name == "layer_skip:2"  # a quarter of the family's 9 layers
    draft = arm.model.model
    assert draft.model.layers[1] is target.model.model.layers[1] and draft.lm_head is target.model.lm_head
    assert len(arm.model.k_cache) == 2


@pytest.mark.parametrize("k", [0, 9])
def test_bad_k_is_named(k):
    target, tokenizer = load_model(FAMILY, TargetConfig(model=FAMILY))
    with pytest.raises(ValueError, match=f"layer_skip k={k}: use 1 to 8"):
        build_arm(ArmConfig(kind="layer_skip", params={"k": k}), target, tokenizer, TargetConfig())


def test_sampled_layer_skip_follows_the_target(monkeypatch):
    """A 4-layer Llama over 6 tokens drafts with its first layer; the 3rd new token's frequencies over 1500
    seeded generations must match its exact marginal under the target (all 6^2 prefixes enumerated)."""
    config = LlamaConfig(vocab_size=6, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         eos_token_id=None, bos_token_id=None, pad_token_id=None)
    torch.manual_seed(0)
    hf = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        hf.model.embed_tokens.weight.mul_(30)  # peaked distributions, so drafts are often accepted
    prompt = torch.tensor([0, 3])

    class Ids:  # token ids in and out; nothing is decoded
        eos_token_id = None

        def decode(self, ids, skip_special_tokens=False) -> str:
            return ""

    monkeypatch.setattr("flashspec.engine.load_model", lambda name, cfg: (NativeLlama(hf, 64), Ids()))
    spec = engine(TargetConfig(), "fixed", k=1, gamma=3)
    draws, accepted = np.zeros(6), 0
    for seed in range(1500):
        out = spec.generate(prompt, max_new_tokens=3, sampling=SamplingConfig(temperature=1.0, seed=seed))
        draws[out.token_ids[2]] += 1
        accepted += sum(a.accepted for a in out.arms.values())
    with torch.no_grad():  # exact: p(x3) = sum over x1, x2 of p(x1) p(x2 | x1) p(x3 | x1, x2)
        pairs = torch.cartesian_prod(torch.arange(6), torch.arange(6))
        seqs = torch.cat([prompt.expand(36, 2), pairs], dim=1)
        probs = hf(seqs).logits.float().softmax(-1)
        joint = probs[:, 1, :].gather(1, pairs[:, :1]).squeeze(1) * probs[:, 2, :].gather(1, pairs[:, 1:]).squeeze(1)
        marginal = (joint[:, None] * probs[:, 3, :]).sum(0).double().numpy()
    assert accepted > 150
    assert chisquare(draws, marginal / marginal.sum() * draws.sum()).pvalue > 1e-3
