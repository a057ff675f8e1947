"""The harness's typed config: flashspec's own dataclasses plus what a measurement run adds.

conf/ only composes this schema (registered in Hydra's ConfigStore as `run_schema`); a key the schema lacks is
an error at composition time. `effective` drops what a run does not read, so two runs that differ only in
unread settings share a config hash (and a relaunched sweep skips the second).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, ListConfig, OmegaConf

from flashspec.config import ArmConfig, BanditConfig, FlashSpecConfig, SamplingConfig, TargetConfig
from flashspec.harness import gpus
from flashspec.harness.data import PROJECT_ROOT, DatasetConfig
from flashspec.models import resolve_name
from flashspec.models.tiny import BUILTIN

METHODS = ("flashspec", "hf_generate", "official")
OFFICIAL = ("eagle", "medusa")  # the authors' code method.backend=official runs (flashspec/harness/official_worker.py)


@dataclass
class ArmSetConfig:
    name: str = "lookup"  # written to the arm_set column
    arms: list[ArmConfig] = field(default_factory=lambda: [ArmConfig()])


@dataclass
class MethodConfig:
    name: str = "flashspec"  # written to the method column
    backend: str = "flashspec"  # flashspec (SpeculativeEngine) | hf_generate (transformers' generate)
    cache_implementation: str | None = None  # hf_generate: "static" for a static KV cache, None = dynamic
    assistant: bool = False  # hf_generate: draft_model as assistant_model, drafting gamma tokens per step
    prompt_lookup: bool = False  # hf_generate: prompt_lookup_num_tokens = gamma
    official: str = ""  # official: whose code decodes (eagle | medusa), greedy, in their own environment
    python: str = "python"  # official: the interpreter of that environment (docs/baselines.md)
    drafter: str = ""  # official: the head, in its authors' layout (scripts/train_drafters.py --format)
    official_args: dict[str, Any] = field(default_factory=dict)  # official: keywords of their generate call


@dataclass
class RunConfig:
    target: TargetConfig = field(default_factory=TargetConfig)
    arms: ArmSetConfig = field(default_factory=ArmSetConfig)
    bandit: BanditConfig = field(default_factory=BanditConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    draft_model: str = "tiny-draft"  # the target's draft model: draft_model arms and hf_assisted use it
    # The target's trained drafters (scripts/train_drafters.py checkpoints), read by arms/medusa, eagle, streaming
    # and arms/all; "" where the target has none.
    medusa_model: str = ""
    eagle_model: str = ""
    eagle3_model: str = ""  # an EAGLE-3 head as its authors release it (arms/eagle3)
    streaming_model: str = ""
    gamma: Any = 4  # an int, or a list: every (arm, gamma) pair is an arm of the bandit
    verifier: str = "auto"  # auto | reference | triton
    max_new_tokens: int = 32
    # The prompt sets' folder; None: those shipped in flashspec/data. Relative paths are taken from the project root.
    data_dir: str | None = None
    baseline: bool = True  # also time plain autoregressive decoding of each prompt, for the speedup column
    warmup: int = 1  # untimed generations (on the first prompts) before measuring; hardware/ sets it
    # cuDNN's attention builds a plan for every new sequence length (seconds each on an H200, so an eager
    # decode pays it at every step of every prompt): off, so timings measure decoding, not planning.
    cudnn_sdpa: bool = False
    progress: bool = True  # tqdm bars
    # CPU runs: torch's thread count. None: OMP_NUM_THREADS if set, else 1. Decoding one sequence is a chain of
    # small matrix-vector products; on 2 shared cores the default (one thread per core) ran the smoke run 16x
    # slower than one thread (OpenMP threads spin waiting for a core that another process holds).
    threads: int | None = None


def register() -> None:
    ConfigStore.instance().store(name="run_schema", node=RunConfig)
    if not OmegaConf.has_resolver("dirname"):
        OmegaConf.register_new_resolver("dirname", dirname)
    gpus.register_resolvers()


def dirname(overrides: str) -> str:
    """A sweep job's directory name from its overrides: one path level (values may be paths), not too long."""
    name = overrides.replace("/", "_") or "run"
    return name if len(name) <= 120 else f"{name[:100]}-{hashlib.sha256(name.encode()).hexdigest()[:12]}"


def compose(*overrides: str, hydra: bool = False) -> DictConfig:
    """The config `python run.py <overrides>` would run, composed without running it (tests, notebooks).

    `hydra=True` keeps the `hydra` node (sweep settings); OmegaConf.to_object makes the rest a RunConfig."""
    register()
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides), return_hydra_config=hydra)


def unknown_keys(node: DictConfig | ListConfig, schema: type = RunConfig, path: str = "") -> list[str]:
    """Keys of `node` its dataclass schema lacks: Hydra accepts `+key=value` into a structured config, and
    OmegaConf.to_object then drops the key silently, so a typo would run with the default."""
    if isinstance(node, ListConfig):
        return [k for i, item in enumerate(node) for k in unknown_keys(item, schema, f"{path}[{i}]")]
    if not isinstance(node, DictConfig) or not dataclasses.is_dataclass(schema):
        return []
    fields = {f.name: f.type for f in dataclasses.fields(schema)}
    found = []
    for key in node:
        name = f"{path}.{key}" if path else str(key)
        if key not in fields:
            found.append(name)
        elif isinstance(value := node._get_node(key), DictConfig | ListConfig):
            inner = OmegaConf.get_type(value) if isinstance(value, DictConfig) else _item_type(schema, key)
            found += unknown_keys(value, inner, name)
    return found


def _item_type(schema: type, key: str) -> type | None:
    """The element dataclass of a list field (ArmSetConfig.arms: list[ArmConfig])."""
    default = next(f for f in dataclasses.fields(schema) if f.name == key).default_factory
    items = default() if callable(default) else []
    return type(items[0]) if items and dataclasses.is_dataclass(items[0]) else None


def check_keys(cfg: DictConfig) -> None:
    unknown = unknown_keys(cfg)
    if unknown:
        parent, _, leaf = re.sub(r"\[\d+\]", "", unknown[0]).rpartition(".")
        siblings = [name for path, name in _setting_names(RunConfig) if path == parent]
        close = difflib.get_close_matches(leaf, siblings, n=1)
        hint = f"did you mean {'.'.join(filter(None, [parent, close[0]]))}? " if close else ""
        raise ValueError(f"unknown setting {', '.join(unknown)}: {hint}python run.py --cfg job lists the settings")


def _setting_names(schema: type, path: str = "") -> list[tuple[str, str]]:
    """(parent path, name) of every setting of the schema, list elements' dataclasses included."""
    names = []
    for f in dataclasses.fields(schema):
        names.append((path, f.name))
        inner = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        inner = inner[0] if isinstance(inner, list) and inner else inner
        if dataclasses.is_dataclass(inner):
            names += _setting_names(type(inner), f"{path}.{f.name}" if path else f.name)
    return names


def gammas(cfg: RunConfig) -> list[int]:
    values = cfg.gamma if isinstance(cfg.gamma, list | tuple) else [cfg.gamma]
    if not values or not all(isinstance(g, int) and not isinstance(g, bool) and g >= 1 for g in values):
        raise ValueError(f"gamma={cfg.gamma!r}: use a positive integer or a list of them: 4 or [2,4]")
    return list(values)


def check(cfg: RunConfig) -> None:
    """Settings that only make sense together; flashspec's dataclasses check their own fields."""
    if cfg.method.backend not in METHODS:
        raise ValueError(f"method.backend={cfg.method.backend!r}: use one of {', '.join(METHODS)}")
    if cfg.max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={cfg.max_new_tokens}: use a positive count")
    if cfg.warmup < 0:
        raise ValueError(f"warmup={cfg.warmup}: use 0 (no warm-up) or a number of prompts")
    if cfg.method.assistant and cfg.method.prompt_lookup:
        raise ValueError("method: set assistant or prompt_lookup, not both (transformers runs one drafter)")
    if cfg.method.backend == "hf_generate" and uses_gamma(cfg) and len(gammas(cfg)) > 1:
        raise ValueError(f"method={cfg.method.name} drafts a fixed length: give one gamma, not {cfg.gamma}")
    if cfg.method.assistant and not cfg.draft_model:
        raise ValueError(f"method={cfg.method.name} needs a draft model: set draft_model=<path or hub id>")
    if cfg.threads is not None and cfg.threads < 1:
        raise ValueError(f"threads={cfg.threads}: use a positive count, or null for the default")
    if cfg.method.backend == "official":
        if cfg.method.official not in OFFICIAL or not cfg.method.drafter:
            raise ValueError(f"method={cfg.method.name}: set method.official to one of {', '.join(OFFICIAL)} and "
                             "method.drafter to a head in its authors' layout (docs/baselines.md)")
        if not cfg.sampling.greedy:
            raise ValueError(f"method={cfg.method.name} runs the authors' greedy decoding only: use sampling=greedy")
    gammas(cfg)


def check_machine(cfg: RunConfig) -> None:
    """What this machine must have for the run: the device, and the models named by path."""
    device = cfg.target.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"target.device={device}: no CUDA device found (torch.cuda.is_available() is False): "
                         "use hardware=cpu")
    for setting, name in models(cfg):
        check_model_path(setting, name)


def models(cfg: RunConfig) -> list[tuple[str, str]]:
    """(setting, model name) for every model the run loads."""
    named = [("target.model", cfg.target.model)]
    if cfg.method.backend == "flashspec" and cfg.bandit.policy != "none":
        named += [(f"arms.arms[{i}].model", arm.model) for i, arm in enumerate(cfg.arms.arms) if arm.model]
    if cfg.method.assistant:
        named.append(("draft_model", cfg.draft_model))
    if cfg.method.backend == "official":
        named.append(("method.drafter", cfg.method.drafter))
    return named


def check_model_path(setting: str, name: str) -> None:
    """A name that can only be a path (absolute, ./ or ~ first, or deeper than a hub id's `owner/name`) must
    exist; otherwise loading it would try the hub and bury the cause under its tracebacks."""
    if name in BUILTIN:
        return
    path = Path(name).expanduser()
    looks_like_path = path.is_absolute() or name.startswith((".", "~")) or name.count("/") > 1
    if looks_like_path and not Path(resolve_name(os.path.expanduser(name))).exists():
        raise ValueError(f"{setting}={name}: the path does not exist (relative paths are taken from the working "
                         f"directory or {PROJECT_ROOT}): give an existing model directory, a hub id or 'tiny'")


def not_in_sweep(cfg: RunConfig) -> str | None:
    """Why a sweep's product job measures nothing of its own (None: it does): a gamma list where one length is
    drafted (transformers' drafters, a fixed arm: its runs at each single gamma measure it). A single run with
    such settings is still run (hf_generate's is refused by `check`; a fixed pair of a gamma list is allowed)."""
    if len(gammas(cfg)) == 1 or not uses_gamma(cfg):
        return None
    if cfg.method.backend == "hf_generate":
        return f"method={cfg.method.name} drafts one length, not gamma={cfg.gamma}"
    if cfg.bandit.policy == "fixed":
        return f"bandit=fixed drafts one length; its runs at each gamma of {cfg.gamma} measure it"
    return None


def uses_gamma(cfg: RunConfig) -> bool:
    if cfg.method.backend == "official":  # their trees are their own
        return False
    if cfg.method.backend == "hf_generate":
        return cfg.method.assistant or cfg.method.prompt_lookup
    return cfg.bandit.policy != "none"


def effective(cfg: RunConfig) -> dict:
    """The settings this run reads; the basis of its config hash."""
    # The drafter checkpoints enter through the arms that read them, resolved.
    drafters = ("progress", "medusa_model", "eagle_model", "eagle3_model", "streaming_model")
    out = {k: v for k, v in asdict(cfg).items() if k not in drafters}
    if cfg.threads is None:  # the default: runs made before the setting existed keep their hashes
        del out["threads"]
    del out["method"]["python"]  # where the authors' environment lives changes nothing measured
    if cfg.method.backend != "official":  # runs made before the backend existed keep their hashes
        for key in ("official", "drafter", "official_args"):
            del out["method"][key]
    if cfg.method.backend in ("hf_generate", "official"):
        del out["bandit"], out["verifier"], out["arms"]
        if not cfg.method.assistant:
            del out["draft_model"]
    else:
        del out["draft_model"]  # the arms hold it, resolved
        policy = cfg.bandit.policy
        if policy in ("none", "fixed"):  # no learning: reward, scope and parameters are not read
            out["bandit"] = {"policy": policy} | ({"arm": cfg.bandit.arm} if policy == "fixed" else {})
        else:
            del out["bandit"]["arm"]
            # Settings the policy does not read: runs made before they existed keep their hashes.
            if cfg.bandit.scope != "carry":
                del out["bandit"]["decay"]
            if cfg.bandit.reward != "cost_model":
                del out["bandit"]["costs"]
    if not uses_gamma(cfg):
        out.pop("gamma")
        out.pop("arms", None)
    return out


def config_hash(cfg: RunConfig) -> str:
    return hashlib.sha256(json.dumps(effective(cfg), sort_keys=True).encode()).hexdigest()[:12]


def engine_config(cfg: RunConfig) -> FlashSpecConfig:
    ar = cfg.bandit.policy == "none"
    return FlashSpecConfig(
        target=cfg.target,
        arms=[] if ar else list(cfg.arms.arms),
        gammas=gammas(cfg),
        bandit=cfg.bandit,
        sampling=cfg.sampling,
        verifier=cfg.verifier,
    )


def baseline_config(cfg: RunConfig) -> FlashSpecConfig:
    """The same target and sampling, decoded autoregressively: the speedup's denominator."""
    return FlashSpecConfig(target=cfg.target, arms=[], gammas=[1], bandit=BanditConfig(policy="none"),
                           sampling=cfg.sampling, verifier=cfg.verifier)
