"""Our heads written in the authors' layouts (Medusa-1, EAGLE-1/2) come back identical through build_arm and
compute what the ported official forward passes of tests/test_official_checkpoints.py compute from the files;
scripts/train_drafters.py --format writes them from training."""

import json
import runpy

import pytest
import torch
from test_official_checkpoints import MAX_CONTEXT, context_of, official_eagle, official_medusa, prefilled_draft

from flashspec import ArmConfig, BanditConfig, FlashSpecConfig, SamplingConfig, SpeculativeEngine, TargetConfig
from flashspec.arms import build_arm
from flashspec.arms.eagle import EagleArm
from flashspec.drafters.eagle import EagleHead, head_config, save_official_eagle
from flashspec.drafters.medusa import MedusaHeads, save_official_medusa, sparse_tree
from flashspec.models import load_model

ACCURACY = [[0.5 ** (d + 1) * 0.6**r for r in range(4)] for d in range(3)]


@pytest.fixture(scope="module")
def target():
    return load_model("tiny", TargetConfig(max_context=MAX_CONTEXT))


def test_medusa_round_trip(target, tmp_path):
    model, tokenizer = target
    hf = model.model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        heads = MedusaHeads(hf.lm_head.weight, n_heads=3, rank=4)
        with torch.no_grad():
            heads.block_weight.normal_(0, 0.05)
            heads.up.normal_(0, 0.05)
    tree = sparse_tree(ACCURACY, 20)
    save_official_medusa(tmp_path / "m", heads, tree, "tiny")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert (config["medusa_num_heads"], config["medusa_num_layers"]) == (3, 1)
    arm = build_arm(ArmConfig(kind="medusa", model=str(tmp_path / "m")), model, tokenizer, TargetConfig())
    assert [tuple(p) for p in config["medusa_choices"]] == tree and len(arm.parents) == len(tree)
    hidden = torch.randn(5, hf.config.hidden_size)
    state = torch.load(tmp_path / "m" / "medusa_lm_head.pt", weights_only=True)
    with torch.no_grad():
        ours = heads(hidden).transpose(0, 1)  # [K, 5, V]
        assert torch.allclose(arm.heads(hidden).transpose(0, 1), ours, atol=1e-4)
        assert torch.allclose(official_medusa(state, hidden, 3, 1), ours, atol=1e-4)


def test_eagle_round_trip(target, tmp_path):
    model, tokenizer = target
    hf = model.model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        head = EagleHead(head_config(hf.config), input_norm=False).eval()
    save_official_eagle(tmp_path / "e", head, hf.get_input_embeddings().weight, hf.config)
    params = {"top_k": 3, "depth": 3}
    arm = build_arm(ArmConfig(kind="eagle", model=str(tmp_path / "e"), params=params), model, tokenizer,
                    TargetConfig())
    for name, tensor in head.state_dict().items():
        assert torch.equal(arm.head.state_dict()[name], tensor), name
    context = context_of(tokenizer, "exported heads draft the same")
    loaded = prefilled_draft(target, arm, context, 12)
    direct = EagleArm(head, hf.get_input_embeddings(), hf.get_output_embeddings(), MAX_CONTEXT, **params)
    original = prefilled_draft(target, direct, context, 12)
    assert loaded.tokens.tolist() == original.tokens.tolist()
    assert loaded.parents.tolist() == original.parents.tolist()
    state = torch.load(tmp_path / "e" / "pytorch_model.bin", weights_only=True)
    config = json.loads((tmp_path / "e" / "config.json").read_text())
    features = torch.randn(6, hf.config.hidden_size)
    tokens = context[1:7]
    with torch.no_grad():
        ours = head(features[None], hf.get_input_embeddings()(tokens)[None], torch.arange(6)[None],
                    torch.ones(6, 6, dtype=torch.bool).tril())[0][0]
        assert torch.allclose(official_eagle(state, config, features, tokens), ours, atol=1e-5)


def test_heads_with_an_input_norm_are_not_exported(target, tmp_path):
    hf = target[0].model
    with pytest.raises(ValueError, match="input_norm=False"):
        save_official_eagle(tmp_path / "e", EagleHead(head_config(hf.config)), hf.get_input_embeddings().weight,
                            hf.config)


def test_train_drafters_writes_the_official_layouts(target, tmp_path):
    script = runpy.run_path("scripts/train_drafters.py")
    script["main"](["--target", "tiny", "--drafters", "medusa,eagle", "--preset", "tiny", "--time-budget-s", "2",
                    "--format", "medusa,eagle", "--out", str(tmp_path), "--device", "cpu"])
    assert (tmp_path / "official-medusa" / "medusa_lm_head.pt").is_file()
    assert (tmp_path / "official-eagle" / "pytorch_model.bin").is_file()
    model, tokenizer = target
    plain = SpeculativeEngine(FlashSpecConfig(bandit=BanditConfig("none")), target=model, tokenizer=tokenizer)
    for kind in ("medusa", "eagle"):
        arm = build_arm(ArmConfig(kind=kind, model=str(tmp_path / f"official-{kind}")), model, tokenizer,
                        TargetConfig())
        cfg = FlashSpecConfig(target=TargetConfig(max_context=MAX_CONTEXT), bandit=BanditConfig("fixed"), gammas=[8])
        spec = SpeculativeEngine(cfg, target=model, tokenizer=tokenizer, arms=[arm])
        for prompt in ("the cat sat", "def return self"):
            assert spec.generate(prompt, 12, SamplingConfig()).token_ids == plain.generate(prompt, 12).token_ids
    with pytest.raises(SystemExit):
        script["main"](["--target", "tiny", "--drafters", "streaming", "--preset", "tiny", "--format", "streaming",
                        "--out", str(tmp_path)])
