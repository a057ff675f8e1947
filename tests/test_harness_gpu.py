"""On the GPU only: the harness (run.py's runner, hardware=cuda, bandit=none) decodes autoregressively about as
fast as the engine's own fast path on the same model, cache size and device (issue 11: it once got half).

    make test-gpu        # the whole suite on CUDA, this file included
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from flashspec.bench.harness import HARNESS_FLOOR, decode_tok_s, engine_decode_tok_s
from flashspec.harness import runner, schema

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

TARGET = Path(__file__).resolve().parents[1] / "results" / "models" / "flashspec-target"
PROMPTS = ("Explain how a hash map handles collisions.", "Write a short story about a lighthouse keeper.",
           "What are the main differences between TCP and UDP?", "Describe how to bake bread, step by step.")
NEW_TOKENS = 128


def test_the_harness_decodes_as_fast_as_the_engine(tmp_path):
    """The harness's decode tok/s (prefill excluded) against the engine's on the harness's own target config,
    timed in the same process right after it. The floor is loose (the suite's other workers share the GPU and
    the host): it catches a harness on a slower path, not noise."""
    (tmp_path / "t.jsonl").write_text("".join(json.dumps({"id": f"t/{i}", "turns": [p]}) + "\n"
                                              for i, p in enumerate(PROMPTS)))
    cfg = OmegaConf.to_object(schema.compose(
        "target=family", f"target.model={TARGET}", "hardware=cuda", "bandit=none", "baseline=false",
        f"max_new_tokens={NEW_TOKENS}", "progress=false", "dataset=custom", "dataset.name=t",
        "dataset.file=t.jsonl", f"data_dir={tmp_path}"))
    results = runner.run(cfg, {}, tmp_path / "run", tmp_path)
    assert (results["new_tokens"] > 8).all(), "too few tokens decoded to time the decode"
    harness, engine = decode_tok_s(results), engine_decode_tok_s(cfg.target, NEW_TOKENS)
    assert harness >= HARNESS_FLOOR * engine, f"harness {harness:.0f} tok/s, engine {engine:.0f} tok/s"
