"""The fast decoding path on the CPU: the static-shape step (what CUDA graphs capture) against the eager
forward, losslessness with it switched on, and the controlled-acceptance benchmark arm."""

import os

import pytest
import torch
import transformers as tf

from flashspec import ArmConfig, BanditConfig, FlashSpecConfig, SpeculativeEngine, TargetConfig
from flashspec.arms import DraftModelArm
from flashspec.arms.controlled import ControlledArm
from flashspec.models import load_hf, load_model
from flashspec.models.native import NativeLlama, fuse_linears

SHAPE = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, initializer_range=0.1)
FAMILIES = {
    "llama": lambda: tf.LlamaForCausalLM(tf.LlamaConfig(**SHAPE)),
    "qwen2": lambda: tf.Qwen2ForCausalLM(tf.Qwen2Config(**SHAPE)),  # biases on q, k, v
    "qwen3": lambda: tf.Qwen3ForCausalLM(tf.Qwen3Config(**SHAPE, head_dim=16)),  # per-head q/k norms
}


def build(family: str, seed: int = 0):
    torch.manual_seed(seed)
    model = FAMILIES[family]().eval()
    if family == "qwen2":  # random biases, so a wrong fusion of them shows
        with torch.no_grad():
            for m in model.model.layers:
                for proj in (m.self_attn.q_proj, m.self_attn.k_proj, m.self_attn.v_proj):
                    proj.bias.normal_(0, 0.1)
    return model


# The Triton decode attention on the CPU: through Triton's interpreter (tests/test_attention_gpu.py: on CUDA)
INTERPRETED = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="needs TRITON_INTERPRET=1")
ATTENTION = ["reference", pytest.param("triton", marks=INTERPRETED)]


@pytest.mark.parametrize("attention", ATTENTION)
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_static_step_matches_eager_forward(family, attention):
    eager, static = NativeLlama(build(family), 96), NativeLlama(build(family), 96, graphs=True, attention=attention)
    prompt = torch.randint(0, 97, (40,), generator=torch.Generator().manual_seed(1))
    blocks = [torch.randint(0, 97, (n,), generator=torch.Generator().manual_seed(n)) for n in (1, 3, 9, 1, 5)]
    assert torch.allclose(eager.forward(prompt).logits, static.forward(prompt).logits, atol=1e-5)
    for i, block in enumerate(blocks):
        if i == 3:  # roll back, as after a rejection: stale cache entries past `length` must stay unseen
            eager.crop(43)
            static.crop(43)
        a, b = eager.forward(block), static.forward(block)
        assert eager.length == static.length
        assert torch.allclose(a.logits, b.logits, atol=1e-5), (family, len(block))
        assert torch.allclose(a.hidden, b.hidden, atol=1e-5)


def test_compiled_step_matches_eager_with_one_version_for_every_longer_block():
    """Compiled (as on CUDA, uncaptured here): the layer and the step's ends match the eager forward, and each
    compiles twice, for n = 1 and once for every n > 1 (a version per block length would compile again at
    every new draft length on the GPU)."""
    from torch._dynamo.utils import counters

    eager, fast = NativeLlama(build("llama"), 96), NativeLlama(build("llama"), 96, graphs=True, compile=True)
    prompt = torch.randint(0, 97, (40,), generator=torch.Generator().manual_seed(1))
    eager.forward(prompt)
    fast.forward(prompt)
    before = counters["stats"]["unique_graphs"]
    for n in (1, 5, 9, 1, 3):
        block = torch.randint(0, 97, (n,), generator=torch.Generator().manual_seed(n))
        assert torch.allclose(eager.forward(block).logits, fast.forward(block).logits, atol=1e-5), n
    assert counters["stats"]["unique_graphs"] - before <= 6  # embed, layer, head: n = 1 and n > 1 each


TREE = torch.tensor([-1, -1, 0, 0, 1, 2, 5])  # two roots, a fork under the first, a chain under one branch


@pytest.mark.parametrize("compile", [False, True])
@pytest.mark.parametrize("attention", ATTENTION)
def test_tree_block_takes_the_static_step_and_matches_the_eager_tree_forward(attention, compile):
    """A token tree goes through the static step (what CUDA captures): depth-rotated nodes in the slots after
    the cache, behind the ancestor mask. Its scores match the eager tree forward, chains after it still match
    (the tree's mask buffer is its own), and the kept path leaves the same cache."""
    eager = NativeLlama(build("llama"), 96)
    static = NativeLlama(build("llama"), 96, graphs=True, compile=compile, attention=attention)
    prompt = torch.randint(0, 97, (30,), generator=torch.Generator().manual_seed(1))
    nodes = torch.randint(0, 97, (len(TREE),), generator=torch.Generator().manual_seed(2))
    for model in (eager, static):
        model.forward(prompt)
    a, b = eager.forward(nodes, TREE), static.forward(nodes, TREE)
    assert -len(TREE) in static.steps  # the static step ran, not the eager forward
    assert torch.allclose(a.logits, b.logits, atol=1e-5)
    for model in (eager, static):
        model.keep_path(30, torch.tensor([0, 2, 5, 6]))
    assert torch.allclose(eager.forward(nodes[:3], TREE[:3]).logits, static.forward(nodes[:3], TREE[:3]).logits,
                          atol=1e-5)
    block = torch.tensor([4, 5, 6])
    assert torch.allclose(eager.forward(block).logits, static.forward(block).logits, atol=1e-5)


def test_a_wrong_tree_mask_would_show():
    """The tree test above can fail: attending to a sibling instead of the ancestors changes the scores."""
    static = NativeLlama(build("llama"), 96, graphs=True)
    static.forward(torch.arange(30))
    nodes = torch.arange(40, 40 + len(TREE))
    right = static.forward(nodes, TREE).logits
    static.crop(30)
    chain = static.forward(nodes).logits  # every node sees all earlier ones
    assert not torch.allclose(right[2:], chain[2:], atol=1e-3)


def test_static_step_fills_the_context_to_the_last_slot():
    eager, static = NativeLlama(build("llama"), 48), NativeLlama(build("llama"), 48, graphs=True)
    for model in (eager, static):
        model.forward(torch.arange(40))
    block = torch.arange(8)
    assert torch.allclose(eager.forward(block).logits, static.forward(block).logits, atol=1e-5)
    with pytest.raises(ValueError, match="max_context"):
        static.forward(block[:1])


def test_static_step_returns_copies():
    """A step's outputs live in fixed buffers (a captured graph's): callers must get their own copy."""
    model = NativeLlama(build("llama"), 64, graphs=True)
    model.forward(torch.arange(10))
    first = model.forward(torch.tensor([5, 6, 7]))
    kept = first.logits.clone()
    model.forward(torch.tensor([8, 9, 10]))
    assert torch.equal(first.logits, kept)


def test_fusion_keeps_hugging_face_weights_the_source():
    model = build("qwen2")
    ids = torch.arange(12)[None]
    before = model(ids).logits
    qkv = NativeLlama(model, 64, graphs=True).fused[0][0]
    assert torch.allclose(model(ids).logits, before, atol=1e-6)
    attn = model.model.layers[0].self_attn
    with torch.no_grad():  # an edit through the Hugging Face module reaches the fused weight
        attn.k_proj.weight[0, 0] = 123.0
    assert qkv[attn.q_proj.weight.shape[0], 0] == 123.0


def test_fusing_mixed_biases_is_refused():
    with pytest.raises(ValueError, match="some have a bias"):
        fuse_linears(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4, bias=False))


def test_graphs_default_off_on_cpu_and_on_when_asked():
    assert not load_model("tiny", TargetConfig())[0].graphs
    assert load_model("tiny", TargetConfig(cuda_graphs=True))[0].graphs


PROMPTS = ["the cat sat on the mat the cat sat on", "def f(x): return x def g(x): return", "hello world"]
ARMS = [ArmConfig(kind="prompt_lookup"), ArmConfig(kind="draft_model", model="tiny-draft")]


@pytest.mark.parametrize("gamma", [1, 4])
def test_greedy_speculative_with_the_static_step_is_lossless(gamma):
    plain = SpeculativeEngine(FlashSpecConfig(TargetConfig(cuda_graphs=False), bandit=BanditConfig("none")))
    fast = TargetConfig(cuda_graphs=True)
    fast = SpeculativeEngine(FlashSpecConfig(fast, arms=ARMS, gammas=[gamma], bandit=BanditConfig("ucb1")))
    accepted = 0
    for p in PROMPTS:
        out = fast.generate(p, 32)
        assert out.token_ids == plain.generate(p, 32).token_ids, p
        accepted += sum(a.accepted for a in out.arms.values())
    assert accepted > 0


@INTERPRETED
def test_greedy_speculative_with_the_triton_decode_attention_is_lossless():
    cfg = TargetConfig(cuda_graphs=True)
    target = NativeLlama(load_hf("tiny", cfg)[0], cfg.max_context, graphs=True, attention="triton")
    draft = DraftModelArm(load_model("tiny-draft", cfg)[0])
    plain = SpeculativeEngine(FlashSpecConfig(TargetConfig(cuda_graphs=False), bandit=BanditConfig("none")))
    fast = FlashSpecConfig(gammas=[4], bandit=BanditConfig("fixed"))
    fast = SpeculativeEngine(fast, target=target, tokenizer=plain.tokenizer, arms=[draft])
    out = fast.generate(PROMPTS[0], 16)
    assert out.token_ids == plain.generate(PROMPTS[0], 16).token_ids
    assert sum(a.accepted for a in out.arms.values()) > 0


def test_unknown_decode_attention_is_refused():
    with pytest.raises(ValueError, match="use auto, triton or reference"):
        NativeLlama(build("llama"), 32, graphs=True, attention="flash")


def controlled_engine(rate: float, gamma: int = 4) -> tuple[SpeculativeEngine, ControlledArm]:
    cfg = TargetConfig(cuda_graphs=True)
    target, tokenizer = load_model("tiny", cfg)
    arm = ControlledArm(target, DraftModelArm(load_model("tiny-draft", cfg)[0]), rate, horizon=160, seed=0)
    cfg = FlashSpecConfig(gammas=[gamma], bandit=BanditConfig("fixed"))
    engine = SpeculativeEngine(cfg, target=target, tokenizer=tokenizer, arms=[arm])
    return engine, arm


def test_controlled_arm_accepts_at_its_set_rate_and_stays_lossless():
    engine, arm = controlled_engine(0.3)
    plain = FlashSpecConfig(bandit=BanditConfig("none"))
    ar = SpeculativeEngine(plain, target=engine.target, tokenizer=engine.tokenizer)
    prompt = "the quick brown fox"
    reference = ar.generate(prompt, 150).token_ids
    for rate in (0.3, 0.85):
        arm.rate, arm.tested, arm.hits = rate, 0, 0
        out = engine.generate(prompt, 150)
        assert out.token_ids == reference
        # ~150 tested tokens at rate 0.3, ~250 at 0.85: 0.12 is over three standard errors either way
        assert abs(arm.realized_rate - rate) < 0.12, (rate, arm.realized_rate, arm.tested)


def test_controlled_arm_rejects_a_rate_outside_zero_one():
    with pytest.raises(ValueError, match="acceptance probability"):
        controlled_engine(1.5)
