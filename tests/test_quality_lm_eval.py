"""The lm-evaluation-harness adapter: lm_eval's CLI runs a generation task through the engine, offline, and
the target's likelihoods are the model's own."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import child_environment
from lm_eval.api.instance import Instance
from omegaconf import OmegaConf

from flashspec import SpeculativeEngine
from flashspec.harness import schema
from flashspec.models.tiny import tiny_model, tiny_tokenizer
from flashspec.quality.lm_eval_adapter import FlashSpecLM

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = ["Q: 1+1=", "Q: the sky is", "Q: cats say"]
MAX_GEN = 8
STOP = "\n\n"


def autoregressive(questions: list[str]) -> list[str]:
    """The default model's answers, decoded by the engine without drafts."""
    engine = SpeculativeEngine(schema.engine_config(OmegaConf.to_object(schema.compose("bandit=none"))))
    return [engine.generate(q, max_new_tokens=MAX_GEN, stop=[STOP]).text for q in questions]


def write_task(folder: Path, answers: list[str]) -> None:
    """A generate_until task over a local JSONL; its answers are what the target decodes greedily."""
    rows = [{"question": q, "answer": a} for q, a in zip(QUESTIONS, answers, strict=True)]
    (folder / "smoke.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = {
        "task": "flashspec_smoke", "dataset_path": "json", "test_split": "test",
        "dataset_kwargs": {"data_files": {"test": str(folder / "smoke.jsonl")}},
        "output_type": "generate_until", "doc_to_text": "{{question}}", "doc_to_target": "{{answer}}",
        "generation_kwargs": {"until": [STOP], "max_gen_toks": MAX_GEN, "do_sample": False},
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0},
    }
    (folder / "smoke.yaml").write_text(json.dumps(task))  # JSON is YAML


def test_lm_eval_cli_runs_a_generation_task_through_the_engine(tmp_path):
    answers = autoregressive(QUESTIONS)
    write_task(tmp_path, answers)
    env = child_environment(HF_DATASETS_CACHE=str(tmp_path / "cache"))
    args = [sys.executable, "-m", "flashspec.quality.lm_eval_adapter", "--model", "flashspec",
            "--model_args", "bandit=ucb1", "gamma=3", "--device", "cpu",
            "--tasks", "flashspec_smoke", "--include_path", str(tmp_path), "--limit", "3",
            "--output_path", str(tmp_path / "out"), "--log_samples"]
    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "flashspec (bandit=ucb1 gamma=3): 3 requests" in done.stderr  # the engine decoded
    samples = [json.loads(line) for line in next((tmp_path / "out").rglob("samples_*.jsonl")).open()]
    # Greedy speculative decoding through lm_eval reproduces the engine's autoregressive answers exactly.
    assert [s["resps"][0][0] for s in sorted(samples, key=lambda s: s["doc_id"])] == answers
    results = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())
    assert results["results"]["flashspec_smoke"]["exact_match,none"] == 1.0


@pytest.fixture(scope="module")
def lm():
    return FlashSpecLM(device="cpu", target="tiny", bandit="ucb1", gamma=2)  # compared with tiny's weights


def request(kind: str, *args) -> Instance:
    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


def test_loglikelihood_is_the_targets(lm):
    model, tokenizer = tiny_model("tiny", len(tiny_tokenizer())), tiny_tokenizer()
    context, continuation = "The cat sat", " on the mat"
    ids = tokenizer.encode(context + continuation)
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
    n = len(tokenizer.encode(context))
    expected = sum(logprobs[i - 1, ids[i]].item() for i in range(n, len(ids)))
    (logprob, greedy), = lm.loglikelihood([request("loglikelihood", context, continuation)])
    assert logprob == pytest.approx(expected, abs=1e-4) and not greedy
    # The target's own greedy continuation is greedy (in tokens: random bytes need not survive decoding).
    ids = lm.tok_encode(context)
    greedy_ids = lm.engine.generate(ids, max_new_tokens=4).token_ids
    assert lm._loglikelihood_tokens([(None, ids, greedy_ids)])[0][1]
    text = context + continuation
    rolling = lm.loglikelihood_rolling([request("loglikelihood_rolling", text)])[0]
    assert rolling == pytest.approx(lm.loglikelihood([request("loglikelihood", "", text)])[0][0], abs=1e-4)


def test_generation_settings_follow_the_task(lm):
    greedy, until, max_new = lm.generation_settings({"until": "\n", "do_sample": False, "temperature": 0.7})
    assert greedy.greedy and until == ["\n"] and max_new == lm.max_gen_toks
    sampled, _, _ = lm.generation_settings({"do_sample": True, "temperature": 0.7, "top_p": 0.9})
    assert sampled.temperature == 0.7 and sampled.top_p == 0.9
    with pytest.raises(ValueError, match="num_beams"):
        lm.generation_settings({"num_beams": 4})


def test_bad_model_args_are_clear_errors():
    with pytest.raises(ValueError, match="not a valid run.py configuration"):
        FlashSpecLM(device="cpu", bogus=1)
    with pytest.raises(ValueError, match="lm_eval --model hf"):
        FlashSpecLM(device="cpu", method="hf_eager")
