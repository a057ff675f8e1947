"""method=eagle_official / medusa_official: the authors' own code (eagle-llm 1.2.1, medusa-llm 0.1), in their
environment, decodes through the harness's OfficialDecoder with heads we exported in their layouts, and its
greedy output is the target's. Needs that environment (docs/baselines.md): FLASHSPEC_OFFICIAL_PYTHON names its
interpreter; without it the tests are skipped, saying so."""

import os
import shutil

import pytest
import torch
from omegaconf import OmegaConf
from transformers import LlamaForCausalLM

from flashspec import BanditConfig, FlashSpecConfig, SpeculativeEngine, TargetConfig
from flashspec.drafters.eagle import EagleHead, head_config, save_official_eagle
from flashspec.drafters.medusa import OFFICIAL_TREE, MedusaHeads, save_official_medusa
from flashspec.harness import decoders, schema
from flashspec.models import load_model
from flashspec.models.tiny import tiny_model, tiny_tokenizer

PYTHON = os.environ.get("FLASHSPEC_OFFICIAL_PYTHON", "")
pytestmark = pytest.mark.skipif(not shutil.which(PYTHON or "no-such-python"),
                                reason="FLASHSPEC_OFFICIAL_PYTHON: no environment with the authors' code")
PROMPTS = ["the cat sat on the mat", "def return self value list for in range print"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny target without grouped-query attention (medusa-llm 0.1's cache has none) and heads for it."""
    root = tmp_path_factory.mktemp("official")
    tokenizer = tiny_tokenizer()
    config = tiny_model("tiny", len(tokenizer)).config
    config.num_key_value_heads = config.num_attention_heads
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model = LlamaForCausalLM(config).eval()
        eagle = EagleHead(head_config(config), input_norm=False)
        medusa = MedusaHeads(model.lm_head.weight, n_heads=4, rank=4)
        with torch.no_grad():
            medusa.up.normal_(0, 0.05)
    model.save_pretrained(root / "target")
    tokenizer.save_pretrained(root / "target")
    save_official_eagle(root / "eagle", eagle, model.get_input_embeddings().weight, config)
    save_official_medusa(root / "medusa", medusa, OFFICIAL_TREE, str(root / "target"))
    target, tok = load_model(str(root / "target"), TargetConfig())
    plain = SpeculativeEngine(FlashSpecConfig(bandit=BanditConfig("none")), target=target, tokenizer=tok)
    expected = {p: plain.generate(p, 16).token_ids for p in PROMPTS}
    return root, expected


@pytest.mark.parametrize("method", ["eagle_official", "medusa_official"])
def test_official_code_decodes_the_targets_greedy_output(setup, method):
    root, expected = setup
    kind = method.removesuffix("_official")
    cfg = OmegaConf.to_object(schema.compose(f"method={method}", f"target.model={root / 'target'}",
                                             f"method.drafter={root / kind}", f"method.python={PYTHON}"))
    schema.check(cfg)
    dec = decoders.decoder(cfg)
    for prompt, ids in expected.items():
        out = dec.generate(dec.tokenizer(prompt)["input_ids"], 16)
        assert out.token_ids == ids, (method, prompt)
        assert out.wall_time_s > 0 and out.steps == 0
