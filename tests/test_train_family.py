"""The model-family trainer: the tiny preset end to end on CPU (~40 s), plus its corpus and packing pieces."""

from __future__ import annotations

import json
import math
import runpy
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from flashspec.train import corpus
from flashspec.train.family import PRESETS, train_family, write_tars
from flashspec.train.tokenizer import train_tokenizer

ROOT = Path(__file__).resolve().parents[1]
TINY = PRESETS["tiny"]
NAMES = [spec.name for spec in TINY.models]


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """One tiny-preset run through the CLI: (model folder, tar folder, metrics)."""
    tmp = tmp_path_factory.mktemp("family")
    main = runpy.run_path(str(ROOT / "scripts" / "train_family.py"))["main"]
    main(["--preset", "tiny", "--out", str(tmp / "models"), "--tar-dir", str(tmp / "tars"),
          "--device", "cpu"])
    return tmp / "models", tmp / "tars", json.loads((tmp / "models" / "metrics.json").read_text())


def test_checkpoints_load_offline_and_share_one_tokenizer(family, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out, _, metrics = family
    vocabs = []
    for name in NAMES:
        model = AutoModelForCausalLM.from_pretrained(out / name)
        tokenizer = AutoTokenizer.from_pretrained(out / name)
        assert isinstance(model, LlamaForCausalLM) and model.dtype == torch.bfloat16
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied
        assert sum(p.numel() for p in model.parameters()) == metrics["models"][name]["params"]
        assert model.config.vocab_size == len(tokenizer) == metrics["tokenizer"]["vocab_size"]
        assert model.generation_config.eos_token_id == tokenizer.eos_token_id
        vocabs.append(tokenizer.get_vocab())
    assert all(v == vocabs[0] for v in vocabs)


def test_saved_target_learned_real_text(family) -> None:
    """The saved weights are the trained ones: a stdlib docstring costs less than a uniform guess."""
    out, _, _ = family
    model = AutoModelForCausalLM.from_pretrained(out / NAMES[0], dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(out / NAMES[0])
    ids = tokenizer(json.__doc__[:1000], return_tensors="pt").input_ids
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss.item()
    assert loss < math.log(len(tokenizer))


@pytest.mark.parametrize("text", ["def f(x):\n    return {'a': x ** 2}  # ok\n", "Grüße, 世界!\t\n  end", ""])
def test_tokenizer_round_trips(family, text: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(family[0] / NAMES[1])
    ids = tokenizer(text).input_ids
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_chat_template(family) -> None:
    tokenizer = AutoTokenizer.from_pretrained(family[0] / NAMES[2])
    messages = [{"role": "user", "content": "Write a haiku."}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1
    text = tokenizer.decode(ids, skip_special_tokens=True)
    assert "Write a haiku." in text and text.rstrip().endswith(":")


def test_metrics_fields_and_losses(family) -> None:
    _, _, metrics = family
    assert {"preset", "command", "device", "versions", "seed", "wall_time_s", "prep_time_s", "corpus",
            "tokenizer", "models", "target_beats_drafts"} <= metrics.keys()
    assert {"python", "torch", "transformers", "tokenizers"} <= metrics["versions"].keys()
    tokens = metrics["corpus"]["tokens"]
    assert tokens["train"] == tokens["train_code"] + tokens["train_prose"]
    assert all(tokens[f"{split}_{kind}"] > 0 for split in ("train", "heldout") for kind in ("code", "prose"))
    # a hard wall: at most the budget plus the steps and saving that were already under way
    assert metrics["wall_time_s"] <= 1.3 * TINY.time_budget_s
    uniform = math.log(metrics["tokenizer"]["vocab_size"])
    assert list(metrics["models"]) == NAMES
    for stats in metrics["models"].values():
        assert stats["steps"] >= 1
        assert stats["train_tokens"] == stats["steps"] * TINY.batch_size * TINY.seq_len
        for kind in ("code", "prose"):
            held = stats["heldout"][kind]
            assert math.isfinite(held["loss"]) and held["loss"] < uniform
            assert held["perplexity"] == pytest.approx(math.exp(held["loss"]), rel=1e-3)
            assert 0 < held["tokens"] <= max(TINY.eval_tokens, TINY.seq_len)


def test_tars_hold_every_output_file(family, tmp_path: Path) -> None:
    out, tars, _ = family
    for tar in sorted(tars.glob("*.tar")):
        with tarfile.open(tar) as t:
            t.extractall(tmp_path, filter="data")
    written = {p.relative_to(out) for p in out.rglob("*") if p.is_file()}
    assert written == {p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()}
    assert all((out / p).read_bytes() == (tmp_path / p).read_bytes() for p in written)


def test_write_tars_splits_under_the_cap(family, tmp_path: Path) -> None:
    out, _, _ = family
    sizes = {name: max(p.stat().st_size for p in (out / name).rglob("*")) for name in NAMES}
    cap = max(sizes[name] for name in NAMES[1:]) + 8 * tarfile.RECORDSIZE
    assert sizes[NAMES[0]] > cap  # the target's weights are bigger than the drafts'
    tars = write_tars(out, [*NAMES[1:], "metrics.json"], tmp_path, max_bytes=cap)
    assert len(tars) > 1 and all(t.stat().st_size <= cap for t in tars)
    with pytest.raises(ValueError, match="smaller shards"):
        write_tars(out, [NAMES[0]], tmp_path, max_bytes=cap)


def test_sample_caps_each_kind_and_ignores_listing_order() -> None:
    refs = [corpus.FileRef(f"src/{kind}{i}", Path("/nonexistent"), 1000, kind, "text")
            for i in range(100) for kind in ("code", "prose")]
    chosen = corpus.sample(refs, max_mb_per_kind=0.02)
    assert sum(r.kind == "code" for r in chosen) == sum(r.kind == "prose" for r in chosen) == 20
    assert chosen == corpus.sample(refs[::-1], max_mb_per_kind=0.02)
    assert corpus.sample(refs, None) == refs


def test_heldout_split_is_near_its_fraction() -> None:
    keys = [f"site-packages/pkg/mod{i}.py" for i in range(20000)]
    assert 0.04 < sum(corpus.is_heldout(k, 0.05) for k in keys) / len(keys) < 0.06


def test_python_file_gives_code_and_its_docstrings_under_one_key() -> None:
    """Same key, so a file's docstrings land in the same split as its code."""
    path = Path(json.__file__)
    key = "stdlib/json/__init__.py"
    docs = corpus.load(corpus.FileRef(key, path, path.stat().st_size, "code", "py"))
    assert [(d.kind, d.key) for d in docs] == [("code", key), ("prose", key)]
    assert docs[0].text == path.read_text() and json.__doc__.strip() in docs[1].text


def test_roff_to_text_reflows_and_drops_requests() -> None:
    page = ".TH X 1\n.SH NAME\nls \\- list\n.SH DESCRIPTION\n.B ls\nlists \\fIfiles\\fR\nin order.\n.PP\nEnd."
    expected = "NAME\n\nls - list\n\nDESCRIPTION\n\nls lists files in order.\n\nEnd."
    assert corpus.roff_to_text(page) == expected


def test_docstrings_in_source_order_and_broken_files_give_none() -> None:
    source = '"""Module doc."""\nclass A:\n    """Class doc."""\n    def f(self):\n        """Method."""\n'
    assert corpus.docstrings(source) == "Module doc.\n\nClass doc.\n\nMethod."
    assert corpus.docstrings("print 'python 2'") == ""


def test_bad_settings_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(["some text"], vocab_size=100, model_max_length=64)
    with pytest.raises(ValueError, match="sum to 1"):
        train_family(replace(TINY, models=TINY.models[:2]), tmp_path, torch.device("cpu"), workers=1)
