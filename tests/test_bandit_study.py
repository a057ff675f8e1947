"""Issue 16's bandit machinery: elimination UCB, UCBSpec and EXP3Spec by hand, carrying evidence across
requests, the cost model and its deterministic reward (same prompt, same arm choices), and the replay that
the bandit study runs on (its fixed-arm steps are the engine's)."""

import math
from functools import cache

import pytest

from flashspec import ArmConfig, BanditConfig, FlashSpecConfig, SpeculativeEngine
from flashspec.bandit import EliminationUCBSelector, EXP3SpecSelector, ThompsonSelector, UCB1Selector, make_selector
from flashspec.bandit.cost import CostModel
from flashspec.harness import replay
from flashspec.harness.analysis import bandit_table

ARMS = [ArmConfig("prompt_lookup"), ArmConfig("draft_model", model="tiny-draft")]
PROMPTS = ["the cat sat on the mat the cat sat on the", "def f(x): return x def f(x): return"]
NAMES = ["prompt_lookup", "draft:tiny-draft"]


def fed(selector, rewards: dict[int, list[float]]):
    for arm, values in rewards.items():
        for r in values:
            selector.update(arm, r)
    return selector


# ---------------------------------------------------------------- policies by hand
def test_elimination_drops_an_arm_whose_upper_bound_is_below_the_best_lower_bound():
    """c = sqrt(1/2). With 20 pulls of 0.9 against 2 of 0.0 the intervals still overlap (0.618 < 0.891); with
    40 against 8, arm 1's upper bound 0.502 is below arm 0's lower bound 0.676, and arm 2's (1.002) is not."""
    c = math.sqrt(0.5)
    s = fed(EliminationUCBSelector(3), {0: [0.9] * 20, 1: [0.0] * 2, 2: [0.0] * 2})
    log_n = math.log(24)
    lower0 = 0.9 - c * math.sqrt(log_n / 20)
    upper1 = 0.0 + c * math.sqrt(log_n / 2)
    assert upper1 > lower0  # 0.891 > 0.618: not yet dominated
    assert s.select() == 0 and s.dropped == set()  # arm 0's index 1.182 beats 0.891
    s = fed(EliminationUCBSelector(3), {0: [0.9] * 40, 1: [0.0] * 8, 2: [0.5] * 8})
    log_n = math.log(56)
    lower0 = 0.9 - c * math.sqrt(log_n / 40)  # 0.900 - 0.224 = 0.676
    assert 0.0 + c * math.sqrt(log_n / 8) < lower0 < 0.5 + c * math.sqrt(log_n / 8)  # 0.502 < 0.676 < 1.002
    s.select()
    assert s.dropped == {1}  # dominated: dropped; arm 2 is not
    for _ in range(200):  # UCB1's growing log n would come back to arm 1; elimination never does
        s.update(s.select(), 0.9)
    assert s.pulls[1] == 8
    s.carry_over(0.5)  # less evidence: every arm is judged again
    assert s.dropped == set()


def test_ucbspec_index_is_ucb1_with_the_radius_sqrt_2_ln_t_over_n():
    s = fed(make_selector("ucbspec", 2), {0: [1.0, 0.0], 1: [0.8]})
    log_n = math.log(3)
    assert math.isclose(s._index(0, log_n), 0.5 + math.sqrt(2 * log_n / 2))
    assert math.isclose(s._index(1, log_n), 0.8 + math.sqrt(2 * log_n / 1))


def test_exp3spec_weights_by_hand():
    """K = 2, horizon 8: eta = sqrt(2 ln 2 / 16) = 0.2944. First step p = (1/2, 1/2); arm 0 earns 0.25: loss
    estimate 0.75 / 0.5 = 1.5; p_0 = 1 / (1 + e^{1.5 eta})."""
    s = EXP3SpecSelector(2, horizon=8)
    eta = math.sqrt(2 * math.log(2) / 16)
    assert math.isclose(s.learning_rate, eta)
    assert s.probabilities() == [0.5, 0.5]
    s.update(0, 0.25)
    assert math.isclose(s.probabilities()[0], 1 / (1 + math.exp(1.5 * eta)))
    p1 = s.probabilities()[1]
    s.update(1, 1.0)  # no loss: the weights do not move
    assert math.isclose(s.probabilities()[1], p1)
    s.carry_over(0.5)  # half the loss kept
    assert math.isclose(s.probabilities()[0], 1 / (1 + math.exp(0.75 * eta)))


def test_carry_over_keeps_the_means_and_shrinks_the_evidence():
    s = fed(UCB1Selector(2), {0: [1.0, 0.5], 1: [0.0]})
    s.carry_over(0.5)
    assert s._counts == [1.0, 0.5] and s._sums == [0.75, 0.0]
    assert s.state()["mean_reward"] == [0.75, 0.0]
    t = ThompsonSelector(2)
    t._successes, t._failures = [4, 0], [2, 6]
    t.carry_over(0.25)
    assert t._successes == [1.0, 0.0] and t._failures == [0.5, 1.5]
    with pytest.raises(ValueError, match="window"):
        make_selector("sliding_window_ucb", 2).carry_over(0.5)
    with pytest.raises(ValueError, match="decay"):
        s.carry_over(1.5)


@pytest.mark.parametrize(("scope", "pulls"), [("request", 0), ("run", 3), ("carry", 1.5)])
def test_begin_request_by_scope(scope, pulls):
    s = fed(UCB1Selector(2), {0: [1.0, 1.0, 1.0]})
    s.begin_request(scope, 0.5)
    assert sum(s._counts) == pulls


# ---------------------------------------------------------------- the cost model
def test_cost_model_interpolates_extrapolates_and_rewards_by_hand():
    costs = CostModel(["a", "b"], [0.0, 0.1], {1: 1.0, 5: 2.0})
    assert costs.verify(1) == 1.0 and costs.verify(3) == 1.5 and costs.verify(9) == 3.0  # the line goes on
    assert costs.verify(0) == 1.0  # never below the cheapest measured forward
    assert costs.step_seconds(1, 4) == pytest.approx(2.1)
    assert costs.best_rate([4, 4]) == pytest.approx(2.5)  # 5 tokens in 2 s (arm a)
    assert costs.reward(0, 5, 4, [4, 4]) == pytest.approx(1.0)
    assert costs.reward(1, 3, 4, [4, 4]) == pytest.approx(3 / 2.1 / 2.5)


def test_cost_model_file_round_trip_and_wrong_arms(tmp_path):
    costs = CostModel(["a", "b"], [0.0, 0.1], {1: 1.0, 5: 2.0})
    costs.save(tmp_path / "c" / "costs.json")
    assert CostModel.load(tmp_path / "c" / "costs.json", ["a", "b"]) == costs
    with pytest.raises(ValueError, match="not this engine's"):
        CostModel.load(tmp_path / "c" / "costs.json", ["a"])
    with pytest.raises(ValueError, match="bandit.costs"):
        CostModel.load(tmp_path / "missing.json", ["a"])


# ---------------------------------------------------------------- through the engine
@cache
def autoregressive() -> SpeculativeEngine:
    return SpeculativeEngine(FlashSpecConfig(bandit=BanditConfig("none")))


def speculative(bandit: BanditConfig) -> SpeculativeEngine:
    ar = autoregressive()
    return SpeculativeEngine(FlashSpecConfig(arms=ARMS, gammas=[3], bandit=bandit), target=ar.target,
                             tokenizer=ar.tokenizer)


def cost_file(tmp_path, draft_s: list[float]):
    path = tmp_path / f"costs-{draft_s[0]}.json"
    CostModel(NAMES, draft_s, {1: 0.01, 4: 0.012}).save(path)
    return str(path)


def test_cost_model_reward_repeats_the_arm_choices_run_to_run(tmp_path):
    """Same prompt, same table: the same trace from two fresh engines and from one engine twice (UCB1 reset per
    request): the wall clock no longer decides. A table that makes prompt lookup costly changes the choices."""
    bandit = BanditConfig("ucb1", reward="cost_model", costs=cost_file(tmp_path, [0.0, 0.005]))
    first = [speculative(bandit).generate(p, 24).trace for p in PROMPTS]
    engine = speculative(bandit)
    assert [engine.generate(p, 24).trace for p in PROMPTS] == first
    assert [engine.generate(p, 24).trace for p in PROMPTS] == first
    costly = BanditConfig("ucb1", reward="cost_model", costs=cost_file(tmp_path, [0.05, 0.005]))
    assert [speculative(costly).generate(p, 24).trace for p in PROMPTS] != first


def test_cost_model_is_measured_once_and_written_where_bandit_costs_points(tmp_path):
    path = tmp_path / "measured.json"
    engine = speculative(BanditConfig("elimination_ucb", reward="cost_model", costs=str(path)))
    out = engine.generate(PROMPTS[0], 12)
    assert path.is_file() and engine.costs == CostModel.load(path, engine.arm_names)
    assert out.token_ids == autoregressive().generate(PROMPTS[0], 12).token_ids  # lossless as ever
    assert min(engine.costs.verify_s.values()) > 0


# ---------------------------------------------------------------- the replay
@cache
def outcomes() -> list[replay.Outcomes]:
    engine = speculative(BanditConfig("fixed"))
    ar = autoregressive()
    return [replay.collect(engine, f"p{i}", None, ar.tokenizer(p)["input_ids"], 24) for i, p in enumerate(PROMPTS)]


def test_replay_walk_is_the_autoregressive_output():
    ar = autoregressive()
    assert [o.tokens for o in outcomes()] == [ar.generate(p, 24).token_ids for p in PROMPTS]


@pytest.mark.parametrize("name", ["outcomes-0.jsonl", "outcomes-0.jsonl.gz"])
def test_outcomes_file_round_trip(tmp_path, name):
    """Plain or gzipped (what scripts/bandit_replay.py collect writes now): the same outcomes come back, and the
    gzipped bytes depend on the outcomes alone (no timestamp), so a rerun rewrites an identical file."""
    path = tmp_path / name
    replay.save(outcomes(), path)
    assert replay.load(path) == outcomes()
    data = path.read_bytes()
    if name.endswith(".gz"):
        assert data[:2] == b"\x1f\x8b" and data[4:8] == bytes(4)  # gzip's magic, and its mtime field zero
    else:
        assert data.startswith(b'{"prompt_id"')


@pytest.mark.parametrize("arm", [0, 1])
def test_replayed_fixed_arm_steps_are_the_engines(arm):
    """Every step of the engine's fixed-arm decoding, but the last (whose draft the budget shortens), emits what
    the replay says it would."""
    costs = CostModel(NAMES, [0.0, 0.005], {1: 0.01, 4: 0.012})
    rows, trace = replay.simulate(outcomes(), costs, [3, 3], replay.Policy("fixed", "cost_model", "run",
                                                                           {"arm": arm}), 0, "r")
    for i, p in enumerate(PROMPTS):
        real = speculative(BanditConfig("fixed", arm=arm)).generate(p, 24).emitted
        replayed = [t["emitted"] for t in trace if t["prompt_id"] == f"p{i}"]
        assert replayed[:-1] == real[: len(replayed) - 1]
        assert sum(replayed) == sum(real) == 23  # the first token comes from the prefill
    assert any(e > 1 for e in replayed)  # drafts were accepted: the comparison is not all ones


def test_step_oracle_by_hand_and_never_slower_than_a_fixed_arm():
    """Four tokens; at position 1 arm 0 matches 2 (to position 4, done) at 1.0 s + 0.0; arm 1 matches 0 at
    1.0 + 0.5, then... the cheapest path is arm 0 once: 1.0 s."""
    o = replay.Outcomes("x", None, [1, 2, 3, 4], drafted=[[2, 2], [2, 2], [2, 2]], matched=[[2, 0], [0, 2], [0, 0]])
    costs = CostModel(["a", "b"], [0.0, 0.5], {1: 1.0, 3: 1.0})
    assert replay.step_oracle(o, costs) == (1.0, [0])
    o.matched = [[0, 1], [0, 0], [1, 1]]  # arm 1 to position 3 (1.5 s), then arm 0 to the end (1.0 s)
    assert replay.step_oracle(o, costs) == (2.5, [1, 0])
    for k in range(2):
        rows, _ = replay.simulate([o], costs, [2, 2], replay.Policy("fixed", "cost_model", "run", {"arm": k}), 0, "r")
        assert rows[0]["wall_time_s"] >= 2.5


def test_bandit_table_ratios_and_spread():
    costs = CostModel(NAMES, [0.0, 0.005], {1: 0.01, 4: 0.012})
    policies = [replay.Policy("ucb1", "cost_model", "run"), replay.Policy("exp3spec", "accepted_tokens", "request")]
    results, trace = replay.study(outcomes(), costs, [3, 3], [(p, range(3)) for p in policies])
    table = bandit_table(results, trace, {"p0": "tune", "p1": "heldout"})
    for _, part in table.groupby("split"):
        best = part[part["method"].str.startswith("fixed")]["speedup"].max()
        row = part[part["method"] == "exp3spec (accepted_tokens), reset per request"].iloc[0]
        assert row["vs best fixed"] == pytest.approx(row["speedup"] / best)
        assert row["min"] <= row["speedup"] <= row["max"] and row["seeds"] == 3
        oracle = part[part["method"].str.startswith("oracle")].iloc[0]
        assert oracle["speedup"] >= best - 1e-12
        clairvoyant = part[part["method"].str.startswith("per-step")].iloc[0]
        assert clairvoyant["speedup"] >= oracle["speedup"] - 1e-12
