"""Replay: the bandit study on recorded drafts, timed by the cost model instead of the wall clock.

Greedy speculative decoding is lossless, so every policy commits the same tokens as autoregressive decoding;
what an arm would have drafted, and how much of it would have been accepted, depends only on the position in
that output. `collect` walks the output once, asking every (arm, gamma) pair for its draft at every position
(the real arms on the real target); `simulate` then plays any policy (the package's own selectors, rewards and
scopes) over those outcomes, each step costing the cost model's seconds for its arm and block. It runs in
milliseconds, so policies, scopes and seeds are compared exactly and without a busy machine's noise; the
per-step clairvoyant oracle (`step_oracle`) is a shortest path over the same outcomes.

What it leaves out (and the wall-clock runs of experiment=bandit_study keep): the host's time per step outside
drafting and the target's forward, the prefill (the same for every method), and drafts shortened near the
end of the budget (the outcomes are those of full-length drafts).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch

from flashspec.bandit import make_selector
from flashspec.bandit.cost import CostModel
from flashspec.engine import SpeculativeEngine
from flashspec.verify import matched_length


@dataclass
class Outcomes:
    """One prompt's greedy output and, for every position p (tokens committed) and pair k, the length of pair
    k's draft there and how many of its tokens match the output from p on (index p - 1)."""

    prompt_id: str
    category: str | None
    tokens: list[int]
    drafted: list[list[int]]
    matched: list[list[int]]


def collect(engine: SpeculativeEngine, prompt_id: str, category: str | None, ids: Sequence[int],
            max_new_tokens: int) -> Outcomes:
    """Decode `ids` greedily as the engine's autoregressive steps do, asking every pair for its draft at every
    position (the arms see the target's forwards as in a request)."""
    sampling = engine.config.sampling
    if not sampling.greedy:
        raise ValueError("replay needs greedy decoding (sampling=greedy): sampled outputs depend on the drafts")
    generator = torch.Generator(engine.device).manual_seed(sampling.seed)
    context = torch.as_tensor(list(ids), dtype=torch.long)
    engine.target.reset()
    for arm, _ in engine.pairs:
        arm.begin(context)
    scores = engine.target.forward(context.to(engine.device))
    engine._observe_target(0, scores)
    tokens = [engine._sample(scores.logits[-1:], context, sampling, generator)]
    drafts = []
    while len(tokens) < max_new_tokens and tokens[-1] not in engine.eos_ids:
        context = torch.cat([context, torch.tensor(tokens[-1:])])
        drafts.append([arm.propose(context, gamma, sampling, generator) for arm, gamma in engine.pairs])
        cached = engine.target.length
        scores = engine.target.forward(context[-1:].to(engine.device))
        engine._observe_target(cached, scores.rows(slice(0, 1)))
        tokens.append(engine._sample(scores.logits[-1:], context, sampling, generator))
    drafted = [[len(d) for d in row] for row in drafts]
    matched = [[matched_length(d.tokens, d.parents, tokens[p:]) for d in row] for p, row in enumerate(drafts, 1)]
    return Outcomes(prompt_id, category, tokens, drafted, matched)


def save(outcomes: list[Outcomes], path: Path) -> None:
    """JSON lines; gzipped where `path` ends in .gz (a study's outcomes are committed: a fifth of the bytes)."""
    text = "".join(json.dumps(asdict(o)) + "\n" for o in outcomes)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode(), mtime=0))  # mtime 0: the same outcomes, the same bytes
    else:
        path.write_text(text)


def load(path: Path) -> list[Outcomes]:
    text = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
    return [Outcomes(**json.loads(line)) for line in text.splitlines() if line.strip()]


@dataclass
class Policy:
    """One learning configuration of the study: the selector, its reward and parameters, its scope."""

    policy: str
    reward: str
    scope: str
    params: dict | None = None
    decay: float = 0.5

    @property
    def name(self) -> str:
        """The policy with the parameters it was given (the `bandit` column), e.g. ucb1(exploration=0.2)."""
        given = ", ".join(f"{k}={v}" for k, v in (self.params or {}).items() if k not in ("horizon", "arm"))
        return f"{self.policy}({given})" if given else self.policy


def simulate(outcomes: list[Outcomes], costs: CostModel, gammas: list[int], policy: Policy, seed: int,
             run_id: str) -> tuple[list[dict], list[dict]]:
    """Play `policy` over the prompts in order; returns result rows and trace rows in the harness's columns
    (times in cost-model seconds; the baseline: autoregressive steps, a one-token forward each)."""
    selector = make_selector(policy.policy, len(gammas), seed=seed, **(policy.params or {}))
    rows, trace = [], []
    for o in outcomes:
        selector.begin_request(policy.scope, policy.decay)
        pos, seconds, step = 1, 0.0, 0
        while pos < len(o.tokens):
            k = selector.select()
            drafted, emitted = o.drafted[pos - 1][k], min(o.matched[pos - 1][k] + 1, len(o.tokens) - pos)
            seconds += costs.step_seconds(k, drafted)
            if selector.full_information:
                selector.update_all([reward(policy.reward, costs, gammas, j, o, pos) for j in range(len(gammas))])
            else:
                selector.update(k, reward(policy.reward, costs, gammas, k, o, pos))
            step += 1
            trace.append({"run_id": run_id, "prompt_id": o.prompt_id, "turn": 1, "step": step,
                          "arm": costs.arms[k], "emitted": emitted})
            pos += emitted
        rows.append(result_row(o, costs, run_id, policy, seed, seconds, step))
    return rows, trace


def reward(kind: str, costs: CostModel, gammas: list[int], k: int, o: Outcomes, pos: int) -> float:
    """The engine's reward for pair k at this position (flashspec.bandit.reward.step_reward); wall-clock rewards are
    not replayed."""
    emitted = min(o.matched[pos - 1][k] + 1, len(o.tokens) - pos)
    if kind == "cost_model":
        return costs.reward(k, emitted, o.drafted[pos - 1][k], gammas)
    if kind == "accepted_tokens":
        return emitted / (max(gammas) + 1)
    raise ValueError(f"bandit.reward={kind!r} is not replayed: use cost_model or accepted_tokens")


def step_oracle(o: Outcomes, costs: CostModel) -> tuple[float, list[int]]:
    """The clairvoyant per-step oracle: the cheapest sequence of pairs to commit the output (a shortest path
    over positions); its seconds and its pairs in order."""
    n = len(o.tokens)
    best, choice = [0.0] * (n + 1), [0] * (n + 1)
    for pos in range(n - 1, 0, -1):
        options = [(costs.step_seconds(k, o.drafted[pos - 1][k]) + best[min(n, pos + o.matched[pos - 1][k] + 1)], k)
                   for k in range(len(costs.arms))]
        best[pos], choice[pos] = min(options)
    pos, path = 1, []
    while pos < n:
        path.append(choice[pos])
        pos = min(n, pos + o.matched[pos - 1][choice[pos]] + 1)
    return best[1], path


def result_row(o: Outcomes, costs: CostModel, run_id: str, policy: Policy | None, seed: int, seconds: float,
               steps: int, fixed_arm: str | None = None, bandit: str | None = None) -> dict:
    return {"run_id": run_id, "method": "flashspec", "bandit": bandit or (policy.name if policy else "fixed"),
            "bandit_scope": scope_name(policy) if policy else None, "bandit_reward": policy.reward if policy else None,
            "fixed_arm": fixed_arm, "seed": seed, "dataset": "bandit_mix", "category": o.category,
            "prompt_id": o.prompt_id, "turn": 1, "new_tokens": len(o.tokens), "steps": steps,
            "wall_time_s": seconds, "baseline_new_tokens": len(o.tokens),
            "baseline_wall_time_s": (len(o.tokens) - 1) * costs.verify(1)}


def scope_name(policy: Policy) -> str:
    return f"carry {policy.decay}" if policy.scope == "carry" else policy.scope


def study(outcomes: list[Outcomes], costs: CostModel, gammas: list[int],
          runs: Sequence[tuple[Policy, Sequence[int]]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every fixed pair, the per-step oracle, and every policy over its seeds, as results and trace tables."""
    outcomes = [o for o in outcomes if len(o.tokens) > 1]  # a one-token answer has no step to choose
    rows, trace = [], []
    for k, name in enumerate(costs.arms):
        fixed_rows, fixed_trace = simulate(outcomes, costs, gammas, Policy("fixed", "cost_model", "run",
                                                                           {"arm": k}), 0, f"fixed {name}")
        rows += [r | {"bandit": "fixed", "bandit_scope": None, "bandit_reward": None, "fixed_arm": name}
                 for r in fixed_rows]
        trace += fixed_trace
    for o in outcomes:
        seconds, path = step_oracle(o, costs)
        rows.append(result_row(o, costs, "step oracle", None, 0, seconds, len(path), bandit="step_oracle"))
    for policy, seeds in runs:
        for seed in seeds:
            run_id = f"{policy.name},{policy.reward},{scope_name(policy)},seed={seed}"
            new_rows, new_trace = simulate(outcomes, costs, gammas, policy, seed, run_id)
            rows += new_rows
            trace += new_trace
    return pd.DataFrame(rows), pd.DataFrame(trace)
