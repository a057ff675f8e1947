from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import OmegaConf

from flashspec.harness import schema
from flashspec.harness.schema import RunConfig, config_hash, engine_config, gammas

CONF = Path(__file__).resolve().parents[1] / "conf"
# Options that need a value from the command line (their YAML says ???).
REQUIRED = {
    ("target", "hf"): ["target.model=some/model"],
    ("dataset", "custom"): ["dataset.name=mine", "dataset.file=mine.jsonl"],
    ("dataset", "hub"): ["dataset.name=mine", "dataset.hub_id=someone/set"],
}



def typed(*overrides: str, hydra: bool = False):
    cfg = schema.compose(*overrides, hydra=hydra)
    return cfg if hydra else OmegaConf.to_object(cfg)


def options() -> list[tuple[str, str]]:
    return [(d.name, f.stem) for d in sorted(CONF.iterdir()) if d.is_dir() for f in sorted(d.glob("*.yaml"))]


def test_default_is_the_family_smoke_run():
    cfg = typed()
    assert isinstance(cfg, RunConfig)
    assert (cfg.target.model, cfg.target.device) == ("results/models/flashspec-target", "cpu")
    assert (cfg.dataset.name, cfg.dataset.limit) == ("mt_bench", 3)
    assert cfg.arms.arms[1].model == "results/models/flashspec-draft-m"  # the draft follows the target's choice


@pytest.mark.parametrize("group,option", options())
def test_every_option_composes_into_the_schema(group, option):
    cfg = typed(f"{group}={option}", *REQUIRED.get((group, option), []))
    schema.check(cfg)


def test_unknown_option_lists_the_valid_choices():
    with pytest.raises(MissingConfigException) as err:
        typed("bandit=nosuch")
    for choice in ("ucb1", "thompson", "none", "fixed", "hedge"):
        assert choice in str(err.value)


def test_unknown_key_is_an_error():
    with pytest.raises(ConfigCompositionException, match="gama"):
        typed("gama=4")


def test_gamma_shorthand_int_or_list():
    assert gammas(typed("gamma=8")) == [8]
    cfg = typed("gamma=[2,4]")
    assert gammas(cfg) == [2, 4] and engine_config(cfg).gammas == [2, 4]
    for bad in ("gamma=0", "gamma=[]", "gamma=abc"):
        with pytest.raises(ValueError, match="gamma="):
            gammas(typed(bad))


def test_hash_ignores_what_a_run_does_not_read():
    base = config_hash(typed())
    assert config_hash(typed("progress=false")) == base
    assert config_hash(typed("bandit.arm=1")) == base  # ucb1 never reads the fixed arm
    assert config_hash(typed("gamma=8")) != base
    assert config_hash(typed("bandit=fixed")) != config_hash(typed("bandit=fixed", "bandit.arm=1"))
    assert config_hash(typed("bandit=none", "gamma=8")) == config_hash(typed("bandit=none"))
    assert config_hash(typed("method=hf_eager", "bandit=thompson")) == config_hash(typed("method=hf_eager"))
    assert config_hash(typed("method=hf_assisted", "gamma=2")) != config_hash(typed("method=hf_assisted"))


def test_combinations_that_cannot_run_are_rejected():
    with pytest.raises(ValueError, match="give one gamma"):
        schema.check(typed("method=hf_prompt_lookup", "gamma=[2,4]"))
    with pytest.raises(ValueError, match="needs a draft model: set draft_model"):
        schema.check(typed("method=hf_assisted", "draft_model="))


@pytest.mark.parametrize("name", [f.stem for f in sorted((CONF / "experiment").glob("*.yaml"))])
def test_experiments_define_a_resumable_sweep(name):
    cfg = typed(f"experiment={name}", hydra=True)
    assert cfg.hydra.sweep.dir == f"outputs/experiments/{name}"
    assert cfg.hydra.sweeper.params  # a named study is one `python run.py -m experiment=<name>`
    assert cfg.dataset.limit is None


@pytest.mark.parametrize("policy", ["ucb1", "hedge"])  # hedge: every arm drafts every step, from the same state
def test_the_learned_drafters_are_arm_options_of_the_family(policy):
    from flashspec import SpeculativeEngine

    cfg = typed("arms=all", f"bandit={policy}", "gamma=[2,4]")
    kinds = [a.kind for a in cfg.arms.arms]
    assert kinds == ["prompt_lookup", "draft_model", "medusa", "eagle", "streaming"]
    engine = SpeculativeEngine(engine_config(cfg))
    assert len(engine.pairs) == 10  # five drafters x two gammas, each an arm of the bandit
    ar = SpeculativeEngine(engine_config(typed("bandit=none")))
    prompt = "def fibonacci(n):\n"
    assert engine.generate(prompt, 40).token_ids == ar.generate(prompt, 40).token_ids  # greedy: lossless
    # A checkpoint path enters the hash only through the arms that read it.
    assert config_hash(typed("medusa_model=elsewhere")) == config_hash(typed())
    assert config_hash(typed("arms=medusa", "medusa_model=elsewhere")) != config_hash(typed("arms=medusa"))


def test_a_learned_arm_without_a_checkpoint_says_which_setting_to_give():
    from flashspec import SpeculativeEngine

    with pytest.raises(ValueError, match="arm kind eagle needs `model`"):
        SpeculativeEngine(engine_config(typed("target=tiny", "arms=eagle", "bandit=ucb1")))
