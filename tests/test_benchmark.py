"""engine.benchmark measures its fields: speed of both engines, acceptance, and the drafters' memory."""

import pytest
import torch

from flashspec import BanditConfig, FlashSpecConfig, SpeculativeEngine, TargetConfig
from flashspec.arms.eagle import EagleArm
from flashspec.drafters.eagle import EagleHead, head_config
from flashspec.models import load_model

PROMPTS = ["abc abc abc abc", "the cat sat on the mat; the cat"]


def nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def test_benchmark_reports_measured_fields():
    target_cfg = TargetConfig(max_context=96)
    target, tokenizer = load_model("tiny", target_cfg)
    hf = target.model
    torch.manual_seed(0)
    head = EagleHead(head_config(hf.config))
    arm = EagleArm(head, hf.get_input_embeddings(), hf.get_output_embeddings(), 96, top_k=1, depth=3)
    cfg = FlashSpecConfig(target=target_cfg, bandit=BanditConfig(policy="fixed"), gammas=[3])
    engine = SpeculativeEngine(cfg, target=target, tokenizer=tokenizer, arms=[arm])
    result = engine.benchmark(PROMPTS, num_runs=2, max_new_tokens=12)
    assert result.generations == 2 * len(PROMPTS)
    assert result.tokens_per_second > 0 and result.baseline_tokens_per_second > 0
    ratio = result.tokens_per_second / result.baseline_tokens_per_second
    assert result.average_speedup == pytest.approx(ratio, rel=1e-12)
    assert 0 <= result.speculation_accuracy <= 1  # not nan: the arm drafted
    assert 1 <= result.tokens_per_step <= 4
    assert result.matches_baseline == 1.0  # greedy: lossless
    memory = result.memory
    # The head's own parameters; its rotary buffer, feature buffer and KV cache are the rest. The target's
    # embedding and lm_head, which the arm also holds, are not the drafter's.
    assert memory.drafter_param_bytes == nbytes(head.parameters())
    assert memory.drafter_cache_bytes == nbytes([*head.buffers(), arm.features.values, arm.keys, arm.values])
    assert memory.target_cache_bytes == nbytes([*target.k_cache, *target.v_cache, *hf.buffers()])
    assert memory.peak_cuda_delta_bytes is None
    overhead = memory.drafter_param_bytes + memory.drafter_cache_bytes
    assert result.as_dict()["memory_overhead_bytes"] == overhead


def test_benchmark_errors():
    cfg = FlashSpecConfig(target=TargetConfig(max_context=64), bandit=BanditConfig(policy="none"))
    engine = SpeculativeEngine(cfg)
    with pytest.raises(ValueError, match="autoregressively"):
        engine.benchmark(PROMPTS)
    with pytest.raises(ValueError, match="at least one prompt"):
        engine.benchmark([])
