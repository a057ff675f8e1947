"""Prompt sets: JSONL files of the shared schema (or a hub dataset), filtered, and turned into token ids."""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from transformers import PreTrainedTokenizerBase

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PACKAGED_DATA = Path(__file__).resolve().parents[1] / "data"  # the prompt sets shipped with flashspec


@dataclass
class DatasetConfig:
    name: str = "mt_bench"
    file: str = "mt_bench.jsonl"  # relative to data_dir, or absolute; ignored when hub_id is set
    hub_id: str | None = None  # a Hugging Face hub dataset with the same columns (id, turns, category, ...)
    hub_split: str = "test"
    chat: bool = True  # false: the bare prompt is continued as text, no chat template (HumanEval)
    limit: int | None = None  # keep the first `limit` prompts (after the shuffle, when seed is set)
    seed: int | None = None  # shuffle with this seed before `limit`; None keeps file order
    categories: list[str] = field(default_factory=list)  # keep only these categories; empty keeps all


@dataclass
class Prompt:
    id: str
    dataset: str
    category: str | None
    turns: list[str]
    test: str | None = None  # HumanEval: the check function; the run then scores each answer (`passed`)
    entry_point: str | None = None  # HumanEval: the function under test


def resolve_data_dir(data_dir: str | None) -> Path:
    """None: the packaged prompt sets (flashspec/data). A relative data_dir is taken from the project root, so
    runs do not depend on the working directory."""
    if data_dir is None:
        return PACKAGED_DATA
    path = Path(data_dir).expanduser()
    return path if path.is_absolute() else (PROJECT_ROOT / path).resolve()


def read_jsonl(path: Path) -> list[dict]:
    records = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: malformed JSON ({err.msg}); fix or delete it") from err
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
            records.append(record)
    return records


def read_hub(hub_id: str, split: str) -> list[dict]:
    try:
        import datasets  # optional: only hub-configured prompt sets need it
    except ImportError as err:
        raise ValueError(
            f"dataset.hub_id={hub_id!r} needs the `datasets` package: pip install datasets, "
            "or set dataset.file to a local JSONL and dataset.hub_id=null"
        ) from err
    return [dict(row) for row in datasets.load_dataset(hub_id, split=split)]


def to_prompt(record: dict, where: str, dataset: str) -> Prompt:
    turns = record.get("turns")
    if isinstance(turns, str):
        turns = [turns]
    if "id" not in record or not turns or not all(isinstance(t, str) for t in turns):
        raise ValueError(
            f"{where}: a record needs `id` and `turns` (a non-empty list of strings); got {record!r:.200}"
        )
    return Prompt(str(record["id"]), record.get("dataset") or dataset, record.get("category"), list(turns),
                  record.get("test"), record.get("entry_point"))


def select(prompts: list[Prompt], cfg: DatasetConfig) -> list[Prompt]:
    if cfg.categories:
        known = {p.category for p in prompts}
        missing = sorted(set(cfg.categories) - known)
        if missing:
            raise ValueError(
                f"dataset.categories has {missing}, absent from {cfg.name}: "
                f"choose from {sorted(map(str, known))}"
            )
        prompts = [p for p in prompts if p.category in cfg.categories]
    if cfg.seed is not None:
        prompts = prompts[:]
        random.Random(cfg.seed).shuffle(prompts)
    return prompts if cfg.limit is None else prompts[: cfg.limit]


def load_prompts(cfg: DatasetConfig, data_dir: str | None) -> list[Prompt]:
    if cfg.limit is not None and cfg.limit < 1:
        raise ValueError(f"dataset.limit={cfg.limit}: use a positive count, or null for all prompts")
    if cfg.hub_id:
        records, where = read_hub(cfg.hub_id, cfg.hub_split), f"{cfg.hub_id}[{cfg.hub_split}]"
        prompts = [to_prompt(r, f"{where} row {i}", cfg.name) for i, r in enumerate(records)]
    else:
        path = resolve_data_dir(data_dir) / cfg.file
        if not path.is_file():
            where = f"now {data_dir!r}, relative to {PROJECT_ROOT}" if data_dir else "now the packaged prompt sets"
            raise ValueError(
                f"data file {path} not found: set data_dir ({where}) to the folder holding {cfg.file!r}, "
                "or dataset.file to the file's path"
            )
        prompts = [to_prompt(r, f"{path} record {i}", cfg.name) for i, r in enumerate(read_jsonl(path), 1)]
    return select(prompts, cfg)


def plain_chat(messages: Iterable[dict]) -> str:
    """The fallback for tokenizers without a chat template."""
    names = {"user": "User", "assistant": "Assistant"}
    return "".join(f"{names[m['role']]}: {m['content']}\n" for m in messages) + "Assistant:"


def completion_source(messages: Iterable[dict]) -> str:
    """The text a completion prompt (chat: false) continues: the turns joined, later ones after the model's
    answers. Trailing whitespace is cut, as bigcode-evaluation-harness does for HumanEval: BPE merges a newline
    with the indentation after it, so a prompt ending in a bare newline ends on a token the model has rarely
    seen there (the family's target then answers 9 of the first 10 HumanEval prompts with EOS at once)."""
    return "".join(m["content"] for m in messages).rstrip()


def encode(tokenizer: PreTrainedTokenizerBase, messages: list[dict], chat: bool) -> list[int]:
    """Token ids of a conversation ending in a user turn, ready for the assistant's answer."""
    if not chat:
        return tokenizer.encode(completion_source(messages))
    if tokenizer.chat_template:
        return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False))
    return tokenizer.encode(plain_chat(messages))
