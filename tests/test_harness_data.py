import json
from pathlib import Path

import pytest

from flashspec.harness.data import PACKAGED_DATA, DatasetConfig, encode, load_prompts, plain_chat, resolve_data_dir
from flashspec.harness.schema import RunConfig
from flashspec.models.tiny import tiny_tokenizer


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def records(n: int) -> list[dict]:
    return [{"id": f"x/{i}", "dataset": "x", "category": "ab"[i % 2], "turns": [f"q{i}", f"follow-up {i}"],
             "reference": None} for i in range(n)]


def test_filters_limit_seed_and_categories(tmp_path):
    write_jsonl(tmp_path / "x.jsonl", records(10))
    cfg = DatasetConfig(name="x", file="x.jsonl")
    everything = load_prompts(cfg, str(tmp_path))
    assert [p.id for p in everything] == [f"x/{i}" for i in range(10)]
    cfg.categories = ["b"]
    assert {p.category for p in load_prompts(cfg, str(tmp_path))} == {"b"}
    cfg.categories, cfg.limit, cfg.seed = [], 3, 7
    shuffled = [p.id for p in load_prompts(cfg, str(tmp_path))]
    assert len(shuffled) == 3 and shuffled != [p.id for p in everything[:3]]
    assert shuffled == [p.id for p in load_prompts(cfg, str(tmp_path))]  # the seed makes it repeatable


def test_unknown_category_lists_the_known_ones(tmp_path):
    write_jsonl(tmp_path / "x.jsonl", records(2))
    with pytest.raises(ValueError, match=r"\['zzz'\].*\['a', 'b'\]"):
        load_prompts(DatasetConfig(name="x", file="x.jsonl", categories=["zzz"]), str(tmp_path))


def test_malformed_line_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", records(3))
    lines = path.read_text().splitlines()
    lines[1] = lines[1][:-5]  # truncate the second record
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=rf"{path}:2: malformed JSON"):
        load_prompts(DatasetConfig(name="x", file="x.jsonl"), str(tmp_path))


def test_record_without_turns_is_rejected(tmp_path):
    write_jsonl(tmp_path / "x.jsonl", [{"id": "a", "turns": []}])
    with pytest.raises(ValueError, match="record 1: a record needs `id` and `turns`"):
        load_prompts(DatasetConfig(name="x", file="x.jsonl"), str(tmp_path))


def test_missing_file_names_path_and_data_dir(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(ValueError, match=rf"{missing} not found: set data_dir \(now '{tmp_path}'"):
        load_prompts(DatasetConfig(name="x", file="nope.jsonl"), str(tmp_path))


def test_relative_data_dir_is_taken_from_the_project_root():
    root = Path(__file__).resolve().parents[1]
    assert resolve_data_dir("some/data") == (root / "some/data").resolve()


def test_default_data_dir_is_the_packaged_prompt_sets():
    assert RunConfig().data_dir is None and resolve_data_dir(None) == PACKAGED_DATA
    assert PACKAGED_DATA == Path(__file__).resolve().parents[1] / "flashspec" / "data"


def test_chat_template_plain_fallback_and_raw_completion():
    tok = tiny_tokenizer()
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
                {"role": "user", "content": "again"}]
    ids = encode(tok, messages, chat=True)
    assert tok.decode(ids) == tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    # A completion prompt ends where its text does: a trailing newline would be a token of its own, unlike in
    # the code the model learned from (where BPE merges it with the next line's indentation).
    assert tok.decode(encode(tok, [{"role": "user", "content": "def f():\n    \n"}], chat=False)) == "def f():"
    tok.chat_template = None
    assert tok.decode(encode(tok, messages, chat=True)) == plain_chat(messages)
    assert plain_chat(messages) == "User: hi\nAssistant: yo\nUser: again\nAssistant:"


@pytest.mark.parametrize("name,count", [("mt_bench", 80), ("humaneval", 164), ("alpaca", 80),
                                        ("spec_bench", 480)])
def test_packaged_prompt_sets_load(name, count):
    prompts = load_prompts(DatasetConfig(name=name, file=f"{name}.jsonl"), None)
    assert len(prompts) == count and all(p.turns for p in prompts)
    assert len({p.id for p in prompts}) == count
    assert f"`{name}.jsonl`" in (PACKAGED_DATA / "README.md").read_text()  # its source and licence


def test_the_package_declares_its_prompt_sets_as_package_data():
    """`pip install .` (not editable) copies only what pyproject declares."""
    import tomllib

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["flashspec"]
    shipped = {p.relative_to(PACKAGED_DATA.parent) for pattern in patterns for p in PACKAGED_DATA.parent.glob(pattern)}
    assert {p.relative_to(PACKAGED_DATA.parent) for p in PACKAGED_DATA.iterdir()} <= shipped


def test_hub_dataset_without_the_datasets_package_says_how_to_fix(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_datasets(name, *args, **kwargs):
        if name == "datasets":
            raise ImportError("no module named datasets")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    with pytest.raises(ValueError, match="needs the `datasets` package: pip install datasets"):
        load_prompts(DatasetConfig(name="x", hub_id="someone/set"), "unused")
