"""LoRAAdapter: save -> load reproduces the trained model exactly; parameter stats match a hand count."""

import pytest
import torch
from peft import LoraConfig

from flashspec.lora import LoRAAdapter
from flashspec.models.tiny import HEADS, HIDDEN, KV_HEADS, LAYERS, tiny_model, tiny_tokenizer

CONFIG = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "lora_dropout": 0.0}
TEXTS = ["speculative decoding drafts tokens cheaply", "the target verifies them all in one forward pass"]


def fresh_adapter(config=CONFIG) -> LoRAAdapter:
    tokenizer = tiny_tokenizer()
    return LoRAAdapter(tiny_model("tiny", len(tokenizer)), config)


def logits(adapter: LoRAAdapter) -> torch.Tensor:
    ids = torch.tensor([[256, *b"adapted?"]])
    with torch.no_grad():
        return adapter.get_adapted_model()(input_ids=ids).logits


def test_save_load_round_trip(tmp_path):
    trained = fresh_adapter()
    untrained_logits = logits(trained)
    losses = trained.train(TEXTS, tiny_tokenizer(), epochs=2, lr=1e-2, batch_size=2)
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    expected = logits(trained)
    assert not torch.equal(expected, untrained_logits)  # training moved the adapters (B starts at zero)
    trained.save_weights(tmp_path / "adapter")
    loaded = fresh_adapter()
    assert not torch.equal(logits(loaded), expected)
    loaded.load_weights(tmp_path / "adapter")
    assert torch.equal(logits(loaded), expected)


def test_parameter_stats_match_a_hand_count():
    tokenizer = tiny_tokenizer()
    base = tiny_model("tiny", len(tokenizer))
    base_params = sum(p.numel() for p in base.parameters())
    stats = LoRAAdapter(base, LoraConfig(**CONFIG)).get_parameter_stats()
    head_dim = HIDDEN // HEADS
    r = CONFIG["r"]
    # LoRA on Linear(i -> o) adds A [r, i] and B [o, r]; q_proj is HIDDEN -> HIDDEN, v_proj HIDDEN -> kv.
    lora = LAYERS * (r * (HIDDEN + HIDDEN) + r * (HIDDEN + KV_HEADS * head_dim))
    assert stats["trainable_params"] == lora
    assert stats["total_params"] == base_params + lora
    assert stats["trainable_percent"] == pytest.approx(100 * lora / (base_params + lora))


def test_token_ids_and_dict_rows_train():
    adapter = fresh_adapter()
    rows = [{"input_ids": list(b"token ids work too")}, {"text": "and texts"}]
    assert len(adapter.train(rows, tiny_tokenizer(), batch_size=1)) == 2
    assert len(adapter.train([list(b"plain id lists")], batch_size=1)) == 1


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown LoraConfig fields"):
        fresh_adapter({"rank": 4})
    with pytest.raises(ValueError, match="target_modules"):
        fresh_adapter({"r": 4, "target_modules": ["no_such_proj"]})
    adapter = fresh_adapter()
    with pytest.raises(ValueError, match="no LoRA weights"):
        adapter.load_weights(tmp_path)
    adapter.save_weights(tmp_path / "r4")
    with pytest.raises(ValueError, match="do not fit"):
        fresh_adapter({**CONFIG, "r": 2}).load_weights(tmp_path / "r4")
    with pytest.raises(ValueError, match="need a tokenizer"):
        adapter.train(["text without a tokenizer"])
