"""The engine's reward bookkeeping: a step's reward in [0, 1] (bandit.reward, see docs/bandit.md), and at each
request what the policy keeps (bandit.scope) and the cost model that bandit.reward=cost_model reads."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from flashspec.bandit.cost import calibrate_costs

if TYPE_CHECKING:
    from flashspec.engine import SpeculativeEngine

log = logging.getLogger(__name__)


def begin_request(engine: SpeculativeEngine) -> None:
    """What the bandit keeps from earlier requests (bandit.scope), and the cost model its reward needs: the
    engine's `costs` (read from bandit.costs when it was built) or, at the first request, measured here and
    written to bandit.costs, so the runs after it read the same table."""
    if engine.selector is None:
        return
    bandit = engine.config.bandit
    engine.selector.begin_request(bandit.scope, bandit.decay)
    if bandit.reward == "cost_model" and engine.costs is None:
        engine.costs = calibrate_costs(engine)
        log.info("bandit cost model (seconds, measured on this machine): %s", json.dumps(asdict(engine.costs)))
        if bandit.costs:
            engine.costs.save(Path(bandit.costs))


def step_reward(engine: SpeculativeEngine, k: int, emitted: int, drafted: int, seconds: float) -> float:
    """The step's reward in [0, 1]: pair k emitted `emitted` tokens from a draft of `drafted`, in `seconds`."""
    reward = engine.config.bandit.reward
    if reward == "accepted_tokens":
        return emitted / (max(g for _, g in engine.pairs) + 1)
    if reward == "cost_model":  # the same tokens give the same reward, however busy the machine
        return engine.costs.reward(k, emitted, drafted, [g for _, g in engine.pairs])
    rate = emitted / max(seconds, 1e-9)
    engine.best_rate = max(engine.best_rate, rate)  # the engine's, so a decoder can forget it between runs
    return rate / engine.best_rate
