"""docs/coming-from.md runs as a doc-test (the seeds' examples, as a user pastes them), and what it promises
around SpecStream's API holds: from_model finds, trains or refuses a Streaming drafter; results read by key;
LoRAAdapter takes SpecStream's config keys; DeploymentConfig checks the machine."""

import doctest
import json
import os
from pathlib import Path

import pytest
import torch

from flashspec import DeploymentConfig, GenerationResult, LoRAAdapter, SpeculativeEngine
from flashspec import deploy as deploy_module
from flashspec.drafters.checkpoint import CONFIG
from flashspec.models.tiny import tiny_model, tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "coming-from.md"
FAMILY = ROOT / "results" / "models"
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def test_coming_from_runs(tmp_path, monkeypatch):
    """From a folder where `results/` is the repository's, so the README paths resolve and LoRA weights land
    in the temporary folder."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results").symlink_to(ROOT / "results")
    test = doctest.DocTestParser().get_doctest(DOC.read_text(), {}, DOC.name, str(DOC), 0)
    assert len(test.examples) > 30
    report: list[str] = []
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    runner.run(test, out=report.append)
    assert runner.failures == 0, "".join(report)
    assert (tmp_path / "lora_weights").is_dir()


@pytest.fixture(scope="module")
def family():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = str(FAMILY / "flashspec-target")
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), AutoTokenizer.from_pretrained(path)


def test_from_model_finds_the_drafter_trained_for_the_model(family):
    engine = SpeculativeEngine.from_model(*family, gamma=3, max_speculation_depth=2, temperature=0.0, device="cpu")
    assert Path(engine.config.arms[0].model) == FAMILY / "flashspec-streaming"
    assert engine.config.gammas == [2] and engine.config.target.dtype == "float32"
    greedy = engine.generate("def add(a, b):", max_new_tokens=12)
    assert greedy.token_ids == engine.autoregressive().generate("def add(a, b):", 12).token_ids
    assert greedy.arms["streaming"].drafted > 0


def test_from_model_refusals(family, tmp_path):
    model, tokenizer = family
    with pytest.raises(ValueError, match="drafter at .* has 4: use gamma <= 4"):
        SpeculativeEngine.from_model(model, tokenizer, gamma=6, max_speculation_depth=6)
    with pytest.raises(ValueError, match="holds a 'eagle' drafter, not 'streaming'"):
        SpeculativeEngine.from_model(model, tokenizer, drafter="results/models/flashspec-eagle")
    with pytest.raises(ValueError, match="gamma=0: use an integer >= 1"):
        SpeculativeEngine.from_model(model, tokenizer, gamma=0)
    with pytest.raises(ValueError, match="device='gpu' is not a torch device"):
        SpeculativeEngine.from_model(model, tokenizer, device="gpu")
    command = f"scripts/train_drafters.py --target {FAMILY / 'flashspec-target'} --drafters streaming"
    with pytest.raises(ValueError, match=f"no Speculative Streaming drafter at {tmp_path}.*{command}"):
        SpeculativeEngine.from_model(model, tokenizer, drafter=tmp_path)
    with pytest.raises(TypeError, match="FlashSpecConfig .got a LlamaForCausalLM.: .*from_model"):
        SpeculativeEngine(model)
    tokenizer = tiny_tokenizer()
    unsaved = tiny_model("tiny", len(tokenizer))
    with pytest.raises(ValueError, match="trained for 'this model': save it .*--target DIR"):
        SpeculativeEngine.from_model(unsaved, tokenizer)
    with pytest.raises(ValueError, match="GPT2LMHeadModel is not one of LlamaForCausalLM"):
        from transformers import GPT2Config, GPT2LMHeadModel

        gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=len(tokenizer)))
        SpeculativeEngine.from_model(gpt2, tokenizer)


def test_from_model_trains_a_missing_drafter_beside_the_model(monkeypatch, tmp_path):
    """With train_preset, the drafter is trained by flashspec/train/streaming.py into <model>-streaming, where
    the next from_model finds it without being told."""
    tokenizer = tiny_tokenizer()
    tiny_model("tiny", len(tokenizer)).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    calls = []

    def train(target_path, out_dir, preset):
        calls.append((target_path, out_dir, preset))
        shipped = json.loads((FAMILY / "flashspec-streaming" / CONFIG).read_text())
        Path(out_dir).mkdir()
        meta = {"kind": "streaming", "n_streams": 3, "training": {"target": target_path}}
        (Path(out_dir) / CONFIG).write_text(json.dumps({**shipped, **meta}))

    monkeypatch.setattr("flashspec.train.streaming.train", train)
    with pytest.raises(ValueError, match="train_preset='cpu' to train it here"):
        deploy_module.streaming_drafter(model, None, None)
    out = deploy_module.streaming_drafter(model, None, "tiny")
    assert calls == [(str(tmp_path / "model"), tmp_path / "model-streaming", "tiny")]
    assert deploy_module.trained_for(str(tmp_path / "model")) == out


def test_results_read_by_key():
    result = GenerationResult(text="hi", token_ids=[1, 2], prompt_tokens=3, steps=2, arms={}, trace=[1],
                              wall_time_s=0.5, ttft_s=0.1)
    assert result["text"] == "hi" and result["tau"] == 1.0 and result["tokens_per_s"] == 4.0
    assert {"text", "token_ids", "tau", "alpha", "new_tokens"} <= set(result.keys()) and "speedup" not in result.keys()
    with pytest.raises(KeyError, match="measure_speedup=True"):
        result["speedup"]
    with pytest.raises(KeyError, match="'texts': GenerationResult has the keys text, token_ids"):
        result["texts"]
    result.speedup = 1.5
    assert result["speedup"] == 1.5 and "speedup" in result.keys()


def test_lora_takes_specstream_keys():
    tokenizer = tiny_tokenizer()
    adapter = LoRAAdapter(tiny_model("tiny", len(tokenizer)), {"r": 2, "alpha": 4, "dropout": 0.1,
                                                              "target_modules": ["q_proj"]}, tokenizer=tokenizer)
    assert (adapter.config.lora_alpha, adapter.config.lora_dropout) == (4, 0.1)
    assert len(adapter.train(["texts use the adapter's tokenizer"], epochs=2)) == 2
    with pytest.raises(ValueError, match=r"both \['alpha'\] and peft's \['lora_alpha'\]"):
        LoRAAdapter(tiny_model("tiny", len(tokenizer)), {"r": 2, "alpha": 4, "lora_alpha": 8})


def test_deployment_config_checks_the_machine(monkeypatch):
    config = DeploymentConfig("family", "results/models/flashspec-target", memory_gb=1, gpu_required=True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="gpu_required=True but no CUDA GPU is visible"):
        config.device()
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    huge = DeploymentConfig("family", "x", memory_gb=2 * host, gpu_required=False)
    with pytest.raises(ValueError, match=f"memory_gb={2 * host} but this machine has {host:.1f} GB"):
        huge.device()
    assert DeploymentConfig("family", "x", memory_gb=1, gpu_required=False).device() == "cpu"
    for bad, message in [({"max_tokens": 0}, "max_tokens=0"), ({"memory_gb": -1}, "memory_gb=-1"),
                         ({"temperature": -1.0}, "temperature=-1.0")]:
        with pytest.raises(ValueError, match=message):
            DeploymentConfig("family", "x", **bad)
