"""The EAGLE and Speculative Streaming trainers, tiny preset on the built-in target: the held-out loss falls,
the checkpoint is small and loads through build_arm, and decoding with it stays lossless."""

import pytest
from test_engine_lossless import PROMPTS

from flashspec import ArmConfig, BanditConfig, FlashSpecConfig, SpeculativeEngine, TargetConfig
from flashspec.drafters.checkpoint import WEIGHTS
from flashspec.train import eagle, streaming

MAX_BYTES = 5 << 20


@pytest.mark.parametrize(("trainer", "arm"), [(eagle, ArmConfig(kind="eagle", params={"top_k": 1})),
                                               (streaming, ArmConfig(kind="streaming"))])
def test_trainer(trainer, arm, tmp_path):
    record = trainer.train("tiny", tmp_path / "drafter", preset="tiny", device="cpu")
    assert record["steps"] > 0
    assert record["heldout_loss"] < record["heldout_loss_before"]
    assert (tmp_path / "drafter" / WEIGHTS).stat().st_size < MAX_BYTES
    arm.model = str(tmp_path / "drafter")
    target = TargetConfig(max_context=96)
    spec = SpeculativeEngine(FlashSpecConfig(target=target, arms=[arm], bandit=BanditConfig("fixed")))
    plain = SpeculativeEngine(FlashSpecConfig(bandit=BanditConfig("none")), target=spec.target,
                              tokenizer=spec.tokenizer)
    for prompt in PROMPTS[:4]:
        assert spec.generate(prompt, 16).token_ids == plain.generate(prompt, 16).token_ids
    with pytest.raises(ValueError, match="unknown preset"):
        trainer.train("tiny", tmp_path / "x", preset="huge")
