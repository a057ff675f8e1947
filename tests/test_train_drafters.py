"""The EAGLE and Speculative Streaming trainers, tiny preset on the built-in target: the held-out loss falls,
the checkpoint is small and loads through build_arm, and decoding with it stays lossless. Medusa and the
shared-head draft model the same way through scripts/train_drafters.py (one run, one set of data, then its tau
record), plus the corpus and chat prompts and the CLI's errors."""

import functools
import json
import runpy
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from test_engine_lossless import PROMPTS

from flashspec import ArmConfig, BanditConfig, FlashSpecConfig, SpeculativeEngine, TargetConfig
from flashspec.drafters.checkpoint import WEIGHTS
from flashspec.drafters.shared_head import hf_model
from flashspec.models import NativeLlama, load_hf
from flashspec.models.tiny import HIDDEN, tiny_tokenizer
from flashspec.train import corpus, eagle, feature_drafters, streaming
from flashspec.train.distill import (
    FAMILY_HELDOUT_FRAC,
    INSTRUCTIONS,
    MIN_WINDOW,
    chat_frame,
    chat_prompts,
    corpus_prompts,
    corpus_streams,
)
from flashspec.train.feature_drafters import FitConfig, fit

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


def test_fit_scales_the_learning_rate_per_group():
    """A group's lr_scale multiplies the preset's lr (the stream embeddings' 10x): Adam's first step moves every
    element by about its learning rate."""
    a, b = torch.zeros(3, requires_grad=True), torch.zeros(3, requires_grad=True)
    cfg = FitConfig(seq_len=2, windows=4, heldout=1, batch_size=2, lr=0.01, max_steps=1, time_budget_s=60)
    fit([{"params": [a]}, {"params": [b], "lr_scale": 10.0}], lambda batch, g: (-(a + b).sum(), a), torch.zeros(4, 2),
        cfg, seed=0)
    torch.testing.assert_close(a.detach(), torch.full((3,), 0.01), rtol=1e-3, atol=0)
    torch.testing.assert_close(b.detach(), torch.full((3,), 0.1), rtol=1e-3, atol=0)


def test_streaming_embeddings_get_their_own_learning_rate(monkeypatch, tmp_path):
    """The stream embeddings must grow to the scale of the residual stream they are added to (RMS ~3 per element
    at the family target's layer 7) from 0.02: at the LoRA's learning rate they stay ~2 % of it and the streams
    cannot tell which offset to predict. train() hands fit a separate, scaled group for them."""
    seen = {}

    def record_groups(params, *args):
        seen["groups"] = params
        return {"steps": 0, "train_time_s": 0.0, "final_train_loss": 0.0, "train_loss_curve": []}

    monkeypatch.setattr(feature_drafters, "fit", record_groups)
    record = streaming.train("tiny", tmp_path / "s", preset="tiny", device="cpu", time_budget_s=3)
    preset = streaming.PRESETS["tiny"]
    lora, streams = seen["groups"]
    assert streams["lr_scale"] == preset.stream_lr_scale > 1 and "lr_scale" not in lora
    assert len(streams["params"]) == 1 and streams["params"][0].shape == (preset.n_streams, HIDDEN)
    assert all(p.requires_grad for p in lora["params"]) and len(lora["params"]) > 0
    assert record["lr"] == preset.lr and record["time_budget_s"] == 3


# ------------------------------------------------------------------ Medusa, through the CLI
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
MAIN = runpy.run_path(str(SCRIPTS / "train_drafters.py"))["main"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("drafters")
    records = MAIN(["--target", "tiny", "--drafters", "draft,medusa", "--preset", "tiny", "--out", str(out),
                    "--device", "cpu", "--time-budget-s", "8", "--tau-prompts", "2", "--tau-new-tokens", "8"])
    return out, records


@pytest.fixture(scope="module")
def medusa(trained) -> tuple[Path, dict]:
    return trained[0] / "flashspec-medusa", trained[1]["medusa"]


def test_shared_head_draft_stores_only_its_layers(trained):
    out, records = trained
    path, record = out / "flashspec-draft", records["draft"]
    config = json.loads((path / "config.json").read_text())
    assert config["kind"] == "shared_head_draft" and config["training"] == record
    assert config["borrows"]["from"] == "tiny" and config["layers"] == record["layers"] == 1
    assert record["heldout_loss"] < record["heldout_loss_before"], "training did not lower the held-out KL"
    with safe_open(path / WEIGHTS, "pt") as f:
        names = list(f.keys())
        shapes = [f.get_slice(n).get_shape() for n in names]
    vocab = len(tiny_tokenizer())
    assert names and not any("embed" in n or "lm_head" in n for n in names)
    assert not any(vocab in shape for shape in shapes), "an embedding or head tensor was saved"
    assert all(n.startswith(("layers.0.", "norm.")) for n in names)


def test_shared_head_draft_borrows_the_targets_head_and_drafts_losslessly(trained):
    path = str(trained[0] / "flashspec-draft")
    spec = SpeculativeEngine(FlashSpecConfig(arms=[ArmConfig(kind="draft_model", model=path)], gammas=[4],
                                             bandit=BanditConfig("fixed")))
    draft = spec.pairs[0][0].model
    assert isinstance(draft, NativeLlama) and len(draft.model.model.layers) == 1
    assert draft.model.lm_head is spec.target.model.lm_head  # attached, not copied
    assert draft.model.model.embed_tokens is spec.target.model.model.embed_tokens
    plain = SpeculativeEngine(FlashSpecConfig(bandit=BanditConfig("none")), target=spec.target,
                              tokenizer=spec.tokenizer)
    drafted = 0
    for prompt in PROMPTS[:4]:
        out = spec.generate(prompt, 16)
        assert out.token_ids == plain.generate(prompt, 16).token_ids
        drafted += sum(s.drafted for s in out.arms.values())
    assert drafted > 0


def test_shared_head_draft_as_a_transformers_assistant(trained):
    """method=hf_assisted: the draft made a whole HF model on the target's tensors; generate stays greedy-exact."""
    target, tokenizer = load_hf("tiny", TargetConfig())
    assistant = hf_model(trained[0] / "flashspec-draft", target)
    assert assistant.lm_head is target.lm_head and len(assistant.model.layers) == 1
    ids = torch.tensor([tokenizer(PROMPTS[0])["input_ids"]])
    kwargs = {"max_new_tokens": 12, "do_sample": False, "pad_token_id": tokenizer.pad_token_id}
    with torch.no_grad():
        expected = target.generate(ids, **kwargs)
        assisted = target.generate(ids, assistant_model=assistant, **kwargs)
    assert torch.equal(expected, assisted)


def test_shared_head_draft_refuses_another_target(trained, tmp_path):
    path = tmp_path / "draft"
    shutil.copytree(trained[0] / "flashspec-draft", path)
    config = json.loads((path / "config.json").read_text())
    config["target"]["vocab_size"] += 1
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="train a drafter for this target"):
        SpeculativeEngine(FlashSpecConfig(arms=[ArmConfig(kind="draft_model", model=str(path))]))


def test_tau_record_names_the_device_and_every_drafter(trained):
    out, _ = trained
    record = json.loads((out / "tau.json").read_text())
    assert record["tau"]["device"].startswith("cpu") and record["tau"]["prompts"] == 2
    arms = record["tau"]["arms"]
    assert set(arms) == {"prompt_lookup", "flashspec-draft", "flashspec-medusa"}
    assert arms["flashspec-draft"]["kind"] == "draft_model"
    assert all(1 <= row["tau_greedy"] <= 5 for row in arms.values())  # gamma 4: at most 4 drafts + 1
    table = (out / "tau.md").read_text()
    assert "| `flashspec-draft` | draft_model |" in table and record["tau"]["device"] in table


def test_medusa_checkpoint_is_small_trained_and_self_describing(medusa):
    path, record = medusa
    config = json.loads((path / "config.json").read_text())
    assert config["kind"] == "medusa" and config["training"] == record
    assert record["heldout_loss"] < record["heldout_loss_before"], "training did not lower the held-out loss"
    assert (path / WEIGHTS).stat().st_size < MAX_BYTES
    assert len(config["accuracy"]) == config["heads"] and len(config["tree"]) == 64
    assert record["time_budget_s"] == 8 and record["lr"] == 3e-3  # --time-budget-s replaced the preset's 10 s


def test_trained_medusa_drafts_losslessly(medusa):
    path, _ = medusa
    spec = SpeculativeEngine(FlashSpecConfig(arms=[ArmConfig(kind="medusa", model=str(path))], gammas=[16],
                                             bandit=BanditConfig("fixed")))
    plain = SpeculativeEngine(FlashSpecConfig(bandit=BanditConfig("none")), target=spec.target,
                              tokenizer=spec.tokenizer)
    for prompt in PROMPTS[:4]:
        assert spec.generate(prompt, 16).token_ids == plain.generate(prompt, 16).token_ids


def test_corpus_prompts_are_reproducible_windows_of_real_text(monkeypatch):
    monkeypatch.setattr(corpus, "discover", functools.cache(corpus.discover))  # walk the file system once
    tokenizer = tiny_tokenizer()
    if len(corpus_streams(tokenizer, 0.05)[0]) <= 32:
        pytest.skip("this machine has too little text for a 0.05 MB corpus sample of windows of 32 tokens "
                    "(the roots of flashspec/train/corpus.py: the Python trees, /usr/share/doc, man pages)")
    a, b = (corpus_prompts(tokenizer, 8, 32, seed=5, max_mb=0.05) for _ in range(2))
    assert a.shape == (8, 32) and torch.equal(a, b)
    assert not torch.equal(a, corpus_prompts(tokenizer, 8, 32, seed=6, max_mb=0.05))
    text = tokenizer.decode(a[0])
    assert sum(c.isprintable() or c.isspace() for c in text) > 0.9 * len(text)


class _SpyTokenizer:
    """A tokenizer that records the size of every batch it is called on."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.batches = tokenizer, []

    def __call__(self, texts, **kwargs):
        self.batches.append(len(texts))
        return self.tokenizer(texts, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.tokenizer, name)


def test_a_split_without_text_is_an_empty_stream(monkeypatch, tmp_path):
    """A machine whose sample holds no prose and no held-out file: those streams are empty, and the tokenizer
    never sees an empty batch (transformers 5.17's fast tokenizers raise IndexError on one)."""
    (tmp_path / "a.py").write_text("def f(x):\n    return [x + i for i in range(10)]  # code, no docstring\n")
    assert not corpus.is_heldout("site-packages/a.py", FAMILY_HELDOUT_FRAC)
    monkeypatch.setattr(corpus, "python_roots", lambda: [("site-packages", tmp_path)])
    for root in ("DOC_ROOT", "LICENSES_ROOT", "MAN_ROOT"):
        monkeypatch.setattr(corpus, root, tmp_path / "absent")
    tokenizer = _SpyTokenizer(tiny_tokenizer())
    train, heldout = corpus_streams(tokenizer, 0.05)
    assert len(train) > 0 and heldout.shape == (0,) and 0 not in tokenizer.batches


def test_chat_prompts_wrap_corpus_windows_in_the_chat_template():
    """Each prompt: the chat template's opening, an instruction (cycling), a contiguous window of the stream, the
    template's generation prompt; all rows one length, raised where the template leaves too little room."""
    tokenizer = tiny_tokenizer()
    stream = torch.arange(10_000)  # ids stand for themselves: a window is a run of consecutive numbers
    frames = [chat_frame(tokenizer, instruction) for instruction in INSTRUCTIONS]
    shortest = MIN_WINDOW + max(len(before) + len(after) for before, after in frames)
    prompts = chat_prompts(tokenizer, stream, 2 * len(INSTRUCTIONS), 16, seed=1)
    assert prompts.shape == (2 * len(INSTRUCTIONS), shortest)
    for i, row in enumerate(prompts.tolist()):
        before, after = frames[i % len(frames)]
        assert row[: len(before)] == before and row[len(row) - len(after):] == after
        window = row[len(before): len(row) - len(after)]
        assert len(window) >= MIN_WINDOW and window == list(range(window[0], window[0] + len(window)))
    assert INSTRUCTIONS[1] in tokenizer.decode(frames[1][0]) and "assistant" in tokenizer.decode(frames[1][1])
    assert chat_prompts(tokenizer, stream, 3, shortest + 40, seed=1).shape == (3, shortest + 40)
    assert torch.equal(prompts, chat_prompts(tokenizer, stream, 2 * len(INSTRUCTIONS), 16, seed=1))


def test_cli_names_unknown_drafters(capsys):
    with pytest.raises(SystemExit):
        MAIN(["--target", "tiny", "--drafters", "medusa,hydra", "--preset", "tiny", "--out", "/tmp/x"])
    assert "choose from draft, medusa, eagle, streaming" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        MAIN(["--target", "tiny", "--drafters", "medusa", "--preset", "tiny", "--out", "/tmp/x",
              "--time-budget-s", "0"])
    assert "--time-budget-s 0.0: give a positive number of seconds" in capsys.readouterr().err


def test_eval_drafters_writes_its_section_of_the_readme(medusa, tmp_path):
    """scripts/eval_drafters.py on a models folder with the tiny target and the trained Medusa heads; twice,
    so the marked section is replaced, and the family's part of the README is kept."""
    models, data = tmp_path / "models", tmp_path / "data"
    model, tokenizer = load_hf("tiny", TargetConfig())
    model.save_pretrained(models / "flashspec-target")
    tokenizer.save_pretrained(models / "flashspec-target")
    shutil.copytree(medusa[0], models / "flashspec-medusa")
    (models / "README.md").write_text("# The family\n\nTheir table.\n")
    data.mkdir()
    for name in ("mt_bench", "humaneval", "alpaca"):
        record = {"id": f"{name}/1", "turns": ["def add(a, b):"]}
        (data / f"{name}.jsonl").write_text(json.dumps(record) + "\n")
    evaluate = runpy.run_path(str(SCRIPTS / "eval_drafters.py"))["main"]
    args = ["--models", str(models), "--data-dir", str(data), "--limit", "1", "--max-new-tokens", "8"]
    evaluate(args)
    result = evaluate(args)
    readme = (models / "README.md").read_text()
    assert readme.startswith("# The family\n\nTheir table.\n") and readme.count("## Drafters") == 1
    assert set(result["arms"]) == {"prompt_lookup", "flashspec-medusa"}
    medusa_row = result["arms"]["flashspec-medusa"]
    assert medusa_row["params"] == json.loads((medusa[0] / "config.json").read_text())["training"]["params"]
    # tau: tokens per target step, at least the target's own token and at most gamma drafts more; the table shows it
    taus = medusa_row["tau"].values()
    assert len(taus) == 6 and all(1 <= t <= result["gamma"] + 1 for t in taus)
    assert " | ".join(f"{t:.2f}" for t in taus) in readme
    assert "| `flashspec-medusa` | medusa |" in readme
