"""The Speculative Streaming arm: it leaves the target untouched, drafts exactly what training computes, and
decoding through it is lossless (greedy: token-identical; sampling: a chi-square through the engine)."""

import numpy as np
import pytest
import torch
from scipy.stats import chisquare
from test_engine_lossless import PROMPTS

from flashspec import ArmConfig, BanditConfig, FlashSpecConfig, SamplingConfig, SpeculativeEngine
from flashspec import TargetConfig as Target
from flashspec.arms import build_arm
from flashspec.arms.streaming import StreamingArm
from flashspec.drafters.streaming import PROJECTIONS, StreamingDrafter, save_streaming
from flashspec.models import load_model
from flashspec.train.streaming import streaming_states, teacher
from flashspec.verify import process_logits

MAX_CONTEXT = 96
# Random (not zero) LoRA weights, so that the adapters change what the streams compute.
LORA = {"r": 4, "lora_alpha": 8, "target_modules": PROJECTIONS, "init_lora_weights": False}


def make_target(**kwargs):
    return load_model("tiny", Target(max_context=MAX_CONTEXT, **kwargs))


def make_drafter(target, seed: int = 0, lora: dict | None = LORA) -> StreamingDrafter:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return StreamingDrafter(target.model, n_layers=2, n_streams=3, lora=lora)


def test_drafter_leaves_the_target_untouched():
    target, _ = make_target()
    ids = torch.tensor([256, *b"untouched"])
    before = target.forward(ids).logits
    make_drafter(target)
    target.reset()
    assert torch.equal(target.forward(ids).logits, before)


def test_a_target_handing_other_layers_to_another_arm_is_refused():
    """One captured set per target: an eagle3 arm's (several layers) and a streaming arm's cannot coexist."""
    target, _ = make_target()
    drafter = make_drafter(target)
    StreamingArm(drafter, target)  # the same layer again is fine (several gammas, one drafter)
    StreamingArm(drafter, target)
    target.set_capture_layer((0, 1))  # as eagle3 sets it
    with pytest.raises(ValueError, match="cannot share a target"):
        StreamingArm(drafter, target)


def test_arm_drafts_what_training_computes():
    target, _ = make_target()
    drafter = make_drafter(target)
    arm = StreamingArm(drafter, target)
    context = torch.tensor([256, *b"streams see the target's cache"])
    arm.begin(context[:-1])
    arm.observe_target(0, target.forward(context[:-1]))
    sampling = SamplingConfig(temperature=1.0)
    draft = arm.propose(context, 3, sampling, torch.Generator().manual_seed(0))
    t = len(context) - 1
    with torch.no_grad():
        states = streaming_states(target.model, drafter.first, context[None, :-1])
        anchors_in, kv, _ = teacher(target.model, drafter.first, states)
        visible = torch.ones(1, t, dtype=torch.bool)
        logits = drafter(anchors_in[:, [t - 1]], torch.tensor([t - 1]), kv, visible)
    torch.testing.assert_close(draft.probs, process_logits(logits[0, 0], sampling))


@pytest.fixture(scope="module")
def engines():
    target, tokenizer = make_target()
    # Default LoRA init (B = 0): streams start as the target's own top layers, so drafts do get accepted.
    drafter = make_drafter(target, lora=None)
    cfg = FlashSpecConfig(target=Target(max_context=MAX_CONTEXT), bandit=BanditConfig("fixed"), gammas=[3])
    spec = SpeculativeEngine(cfg, target=target, tokenizer=tokenizer, arms=[StreamingArm(drafter, target)])
    plain_cfg = FlashSpecConfig(bandit=BanditConfig("none"))
    plain = SpeculativeEngine(plain_cfg, target=target, tokenizer=tokenizer)
    return spec, plain


def test_greedy_is_token_identical(engines):
    spec, plain = engines
    assert len(PROMPTS) >= 20
    drafted = 0
    for prompt in PROMPTS:
        out = spec.generate(prompt, 24)
        assert out.token_ids == plain.generate(prompt, 24).token_ids, prompt
        drafted += out.arms["streaming"].drafted
    assert drafted > 0


def test_static_decode_step_captures_the_anchor_too(engines):
    """cuda_graphs=True decodes through the static-shape step (uncaptured on the CPU): same drafts, output."""
    spec, plain = engines
    target, tokenizer = make_target(cuda_graphs=True)
    arm = StreamingArm(make_drafter(target, lora=None), target)
    static = SpeculativeEngine(spec.config, target=target, tokenizer=tokenizer, arms=[arm])
    for prompt in PROMPTS[:5]:
        out = static.generate(prompt, 24)
        assert out.token_ids == plain.generate(prompt, 24).token_ids
        assert out.arms["streaming"].accepted == spec.generate(prompt, 24).arms["streaming"].accepted


def test_sampling_follows_the_target(engines):
    """Sampling from the full distribution (this untrained drafter's tokens are accepted about a third of the
    time): the target's rank of the first verified token x2 given (prompt, x1) must follow its exact law."""
    spec, _ = engines
    prompt, draws = torch.tensor([256, *b"chi square"]), 700
    vocab = spec.target.vocab_size
    with torch.no_grad():  # p(x1 | prompt) and p(x2 | prompt, x1) for every x1, from the Hugging Face module
        p1 = spec.target.model(prompt[None]).logits[0, -1].softmax(-1)
        continuations = torch.cat([prompt.expand(vocab, -1), torch.arange(vocab)[:, None]], 1)
        p2 = spec.target.model(continuations).logits[:, -1].softmax(-1)
    rank = p2.argsort(-1, descending=True).argsort(-1)
    bins = (rank[..., None] >= torch.tensor([1, 2, 4, 8, 16, 32, 64])).sum(-1)  # [x1, x2] -> rank bin 0..7
    joint = (p1[:, None] * p2).double()
    eos = spec.tokenizer.eos_token_id
    joint[eos] = 0  # generation stops at an EOS x1: bin 8
    expected = torch.zeros(9, dtype=torch.float64).index_add_(0, bins.flatten(), joint.flatten())
    expected[8] = p1[eos]
    counts, accepted = np.zeros(9), 0
    for seed in range(draws):
        out = spec.generate(prompt, 3, SamplingConfig(temperature=1.0, seed=seed))
        x = out.token_ids
        counts[8 if x[0] == eos else bins[x[0], x[1]]] += 1
        accepted += out.arms["streaming"].accepted
    assert accepted > draws / 10
    assert chisquare(counts, (expected / expected.sum()).numpy() * draws).pvalue > 1e-3


def test_checkpoint_round_trip_and_errors(tmp_path):
    target, tokenizer = make_target()
    drafter = make_drafter(target, seed=4)
    save_streaming(tmp_path / "s", drafter, target.model, {"preset": "test"})
    arm = build_arm(ArmConfig(kind="streaming", model=str(tmp_path / "s")), target, tokenizer, Target())
    for key, value in drafter.own_state().items():
        assert torch.equal(arm.drafter.own_state()[key], value), key
    assert target.capture_layer == drafter.first
    with pytest.raises(ValueError, match="takes no params"):
        build_arm(ArmConfig(kind="streaming", model="x", params={"n": 1}), target, tokenizer, Target())
    hf_target, _ = make_target(backend="hf")
    with pytest.raises(ValueError, match="native Llama backend"):
        build_arm(ArmConfig(kind="streaming", model=str(tmp_path / "s")), hf_target, tokenizer, Target())
    with pytest.raises(ValueError, match="n_layers=9"):
        StreamingDrafter(target.model, n_layers=9, n_streams=2)
