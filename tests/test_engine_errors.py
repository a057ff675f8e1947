"""Bad input gets an error that names the problem and the fix."""

import pytest
import torch

from flashspec import ArmConfig, BanditConfig, FlashSpecConfig, SpeculativeEngine, TargetConfig
from flashspec.models.tiny import tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def engine():
    return SpeculativeEngine(FlashSpecConfig(target=TargetConfig(max_context=64)))


def test_gamma_below_one():
    with pytest.raises(ValueError, match=r"gamma.*>= 1"):
        FlashSpecConfig(gammas=[0])


def test_empty_prompt(engine):
    for empty in ("", []):
        with pytest.raises(ValueError, match="empty prompt"):
            engine.generate(empty, 4)


def test_prompt_longer_than_context(engine):
    with pytest.raises(ValueError, match=r"exceeds the context of 64 tokens: shorten the prompt"):
        engine.generate("x" * 70, 4)
    with pytest.raises(ValueError, match="lower max_new_tokens"):
        engine.generate("x" * 60, 10)


def test_unknown_model_path(tmp_path):
    with pytest.raises(ValueError, match=r"unknown model .*save_pretrained"):
        SpeculativeEngine(FlashSpecConfig(target=TargetConfig(model=str(tmp_path / "no-such-model"))))


def save_draft(path, tokenizer, vocab_size: int) -> str:
    tiny_model("tiny-draft", vocab_size).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def test_draft_with_another_tokenizer(tmp_path):
    other = tiny_tokenizer()
    other.add_tokens(["<extra>"])
    draft = save_draft(tmp_path / "draft", other, len(other))
    with pytest.raises(ValueError, match="does not share the target's tokenizer"):
        SpeculativeEngine(FlashSpecConfig(arms=[ArmConfig("draft_model", model=draft)]))


def test_draft_with_another_vocabulary_size(tmp_path):
    draft = save_draft(tmp_path / "draft", tiny_tokenizer(), 300)
    with pytest.raises(ValueError, match="300 logits per token"):
        SpeculativeEngine(FlashSpecConfig(arms=[ArmConfig("draft_model", model=draft)]))


def test_non_finite_logits():
    engine = SpeculativeEngine(FlashSpecConfig(bandit=BanditConfig("none")))
    with torch.no_grad():
        engine.target.model.lm_head.weight[5] = float("nan")
    with pytest.raises(ValueError, match="non-finite logits"):
        engine.generate("hello", 4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bandit": BanditConfig(policy="nope")}, "use one of ucb1.*, none"),
        ({"arms": [ArmConfig(kind="nope")]}, "unknown arm kind 'nope'"),
        ({"target": TargetConfig(backend="nope")}, "use auto, native or hf"),
        ({"verifier": "nope"}, "use auto, reference or triton"),
    ],
)
def test_unknown_choices(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SpeculativeEngine(FlashSpecConfig(**kwargs))


def test_bad_sampling():
    from flashspec import SamplingConfig

    for bad in ({"temperature": -1}, {"top_p": 0}, {"top_k": -2}):
        with pytest.raises(ValueError, match="sampling"):
            SamplingConfig(**bad)
