"""The harness's typed config: flashspec's own dataclasses plus what a measurement run adds.

conf/ only composes this schema (registered in Hydra's ConfigStore as `run_schema`); a key the schema lacks is
an error at composition time. `effective` drops what a run does not read, so two runs that differ only in
unread settings share a config hash (and a relaunched sweep skips the second).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from flashspec.config import ArmConfig, BanditConfig, FlashSpecConfig, SamplingConfig, TargetConfig
from flashspec.harness import gpus
from flashspec.harness.data import PROJECT_ROOT, DatasetConfig

METHODS = ("flashspec", "hf_generate")


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
    gammas(cfg)


def uses_gamma(cfg: RunConfig) -> bool:
    if cfg.method.backend == "hf_generate":
        return cfg.method.assistant or cfg.method.prompt_lookup
    return cfg.bandit.policy != "none"


def effective(cfg: RunConfig) -> dict:
    """The settings this run reads; the basis of its config hash."""
    # The drafter checkpoints enter through the arms that read them, resolved.
    drafters = ("progress", "medusa_model", "eagle_model", "streaming_model")
    out = {k: v for k, v in asdict(cfg).items() if k not in drafters}
    if cfg.method.backend == "hf_generate":
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
