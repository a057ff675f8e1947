"""The EAGLE and Speculative Streaming trainers, tiny preset on the built-in target: the held-out loss falls,
the checkpoint is small and loads through build_arm, and decoding with it stays lossless."""

from dataclasses import replace

import pytest
from test_engine_lossless import PROMPTS

from flashspec import ArmConfig, BanditConfig, FlashSpecConfig, SpeculativeEngine, TargetConfig
from flashspec.drafters.checkpoint import WEIGHTS
from flashspec.train import eagle, streaming

MAX_BYTES = 5 << 20


# The trained EAGLE head drafts trees: on the native target, accepted tree nodes exercise keep_path and the
# features of a tree's path.
CASES = [(eagle, ArmConfig(kind="eagle", params={"top_k": 4, "depth": 4})),
         (streaming, ArmConfig(kind="streaming"))]


@pytest.mark.parametrize(("trainer", "arm"), CASES)
def test_trainer(trainer, arm, tmp_path):
    record = trainer.train("tiny", tmp_path / "drafter", preset="tiny", device="cpu")
    assert record["steps"] > 0
    assert record["heldout_loss"] < record["heldout_loss_before"]
    assert (tmp_path / "drafter" / WEIGHTS).stat().st_size < MAX_BYTES
    arm.model = str(tmp_path / "drafter")
    cfg = FlashSpecConfig(target=TargetConfig(max_context=96), arms=[arm], bandit=BanditConfig("fixed"))
    spec = SpeculativeEngine(replace(cfg, gammas=[8]))
    plain = SpeculativeEngine(FlashSpecConfig(bandit=BanditConfig("none")), target=spec.target,
                              tokenizer=spec.tokenizer)
    accepted = 0
    for prompt in PROMPTS:
        out = spec.generate(prompt, 16)
        assert out.token_ids == plain.generate(prompt, 16).token_ids
        accepted += out.arms[arm.kind].accepted
    assert accepted > 0 or trainer is streaming  # the random target's tokens two ahead are barely learnable
    with pytest.raises(ValueError, match="unknown preset"):
        trainer.train("tiny", tmp_path / "x", preset="huge")
