"""The Medusa arm: greedy decoding through its token trees is token-identical to autoregressive decoding; the
sparse tree is the most probable set of paths; checkpoints load through build_arm with clear errors.
(Sampling losslessness of tree verification, siblings i.i.d. or top-k, is tests/test_tree_verify.py's.)"""

import itertools

import pytest
import torch
from test_engine_lossless import make_prompts

from flashspec import ArmConfig, BanditConfig, FlashSpecConfig, SamplingConfig, SpeculativeEngine
from flashspec import TargetConfig as Target
from flashspec.arms import build_arm
from flashspec.arms.medusa import MedusaArm
from flashspec.drafters.medusa import MedusaHeads, save_medusa, sparse_tree
from flashspec.models import load_model

MAX_NEW = 24
ACCURACY = [[0.5 ** (d + 1) * 0.6**r for r in range(4)] for d in range(4)]  # decreasing in depth and rank


@pytest.fixture(scope="module")
def target():
    return load_model("tiny", Target())


@pytest.fixture(scope="module")
def autoregressive(target):
    model, tokenizer = target
    plain = FlashSpecConfig(bandit=BanditConfig("none"))
    engine = SpeculativeEngine(plain, target=model, tokenizer=tokenizer)
    return {p: engine.generate(p, MAX_NEW).token_ids for p in make_prompts()}


def random_heads(target, seed: int = 0) -> MedusaHeads:
    """Heads that start as the target's own head plus noise: right sometimes, wrong often."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        heads = MedusaHeads(target[0].model.get_output_embeddings().weight, n_heads=4, rank=4)
        with torch.no_grad():
            heads.block_weight.normal_(0, 0.05)
            heads.up.normal_(0, 0.05)
    return heads.eval()


def engine_with(target, arm, gamma: int) -> SpeculativeEngine:
    cfg = FlashSpecConfig(gammas=[gamma], bandit=BanditConfig("fixed"))
    return SpeculativeEngine(cfg, target=target[0], tokenizer=target[1], arms=[arm])


def test_sparse_tree_is_the_most_probable_set_of_paths():
    paths = sparse_tree(ACCURACY, 20)
    assert len(set(paths)) == 20 and all(len(p) == 1 or p[:-1] in paths[:i] for i, p in enumerate(paths))
    prob = {p: torch.tensor([ACCURACY[d][r] for d, r in enumerate(p)]).prod().item()
            for n in range(1, 5) for p in itertools.product(range(4), repeat=n)}
    best = sorted(prob.values(), reverse=True)
    assert sorted((prob[p] for p in paths), reverse=True) == pytest.approx(best[:20])


@pytest.mark.parametrize("gamma", [1, 3, 8, 40])
def test_greedy_medusa_is_token_identical(target, autoregressive, gamma, monkeypatch):
    arm = MedusaArm(random_heads(target), sparse_tree(ACCURACY, 40), target[0].max_context)
    engine = engine_with(target, arm, gamma)
    kept_rows = []
    keep_path = target[0].keep_path
    monkeypatch.setattr(target[0], "keep_path", lambda start, rows: (kept_rows.append(rows.tolist()),
                                                                     keep_path(start, rows)))
    accepted = 0
    for prompt, expected in autoregressive.items():
        out = engine.generate(prompt, MAX_NEW)
        assert out.token_ids == expected, (gamma, prompt)
        accepted += out.arms["medusa"].accepted
    assert accepted > 0, "no draft token was ever accepted: the comparison proved nothing"
    if gamma > 1:  # some accepted path was not the block's prefix: cache entries really moved
        assert any(rows != list(range(len(rows))) for rows in kept_rows)


@pytest.mark.parametrize("siblings", ["top_k", "sample"])
def test_sampled_trees_are_reproducible_and_state_their_distribution(target, siblings):
    arm = MedusaArm(random_heads(target), sparse_tree(ACCURACY, 16), target[0].max_context, siblings)
    engine = engine_with(target, arm, 16)
    sampling = SamplingConfig(temperature=1.0, seed=3)
    first = engine.generate("the cat sat", MAX_NEW, sampling)
    assert engine.generate("the cat sat", MAX_NEW, sampling).token_ids == first.token_ids
    draft = arm.propose(torch.tensor(engine.tokenizer("the cat sat")["input_ids"]), 16, sampling,
                        torch.Generator().manual_seed(0))
    assert (draft.probs is None) == (siblings == "top_k") and draft.parents.tolist() == arm.parents.tolist()
    if siblings == "sample":  # each node drawn from the distribution it states
        assert torch.allclose(draft.probs.sum(-1), torch.ones(16))
        assert (draft.probs.gather(1, draft.tokens[:, None]) > 0).all()


def test_checkpoint_loads_through_build_arm(target, tmp_path):
    heads = random_heads(target, seed=1)
    hf = target[0].model
    save_medusa(tmp_path / "m", heads, hf.config, ACCURACY, {"note": "test"})
    loaded = build_arm(ArmConfig(kind="medusa", model=str(tmp_path / "m")), target[0], target[1], Target())
    assert loaded.tree and len(loaded.parents) == 64
    hidden = torch.randn(128)
    # Stored in bf16: the loaded heads are the saved ones up to that rounding.
    assert torch.allclose(loaded.heads(hidden), heads(hidden), atol=0.05)
    assert (tmp_path / "m" / "model.safetensors").stat().st_size < 5 << 20


def test_bad_configurations_are_named(target, tmp_path):
    save_medusa(tmp_path / "m", random_heads(target), target[0].model.config, ACCURACY, {})
    model, tok = target
    with pytest.raises(ValueError, match="siblings"):
        build_arm(ArmConfig(kind="medusa", model=str(tmp_path / "m"), params={"siblings": "all"}), model, tok,
                  Target())
    with pytest.raises(ValueError, match="unknown medusa params"):
        build_arm(ArmConfig(kind="medusa", model=str(tmp_path / "m"), params={"depth": 3}), model, tok,
                  Target())
    with pytest.raises(ValueError, match="no medusa drafter"):
        build_arm(ArmConfig(kind="medusa", model=str(tmp_path / "none")), model, tok, Target())
    with pytest.raises(ValueError, match="cannot verify"):  # the HF fallback scores chains only
        SpeculativeEngine(FlashSpecConfig(target=Target(backend="hf"),
                                          arms=[ArmConfig(kind="medusa", model=str(tmp_path / "m"))]))
