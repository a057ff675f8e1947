"""Decoding without drafts, chunk by chunk (each step fed the last one's token on the device, the tokens read
back once a chunk), commits exactly what the synchronised step-by-step path commits: greedy and sampled (the
same uniforms in the same order), with the end (an EOS, a stop string, the budget, the context) inside a chunk,
with the same steps, trace and emitted counts, and a cache cropped to what was kept."""

from functools import cache

import pytest
import torch

from flashspec import BanditConfig, FlashSpecConfig, SamplingConfig, SpeculativeEngine

SAMPLINGS = {"greedy": SamplingConfig(), "top_k": SamplingConfig(temperature=0.8, top_k=20, seed=3),
             "t1": SamplingConfig(temperature=1.0, seed=7)}
PROMPT = "the cat sat on the mat"


@cache
def engine(verifier: str) -> SpeculativeEngine:
    """One engine per verifier, passed explicitly: `engine()` and `engine("auto")` would be two cache entries."""
    return SpeculativeEngine(FlashSpecConfig(bandit=BanditConfig("none"), verifier=verifier))


def generate(chunk: int, *args, eos: set[int] = frozenset(), verifier: str = "auto", **kwargs) -> tuple:
    """Output and bookkeeping of one request, `chunk` = 0: the step-by-step path; and the cache's length."""
    ar = engine(verifier)
    ar.ar_chunk, saved = chunk, ar.eos_ids
    ar.eos_ids = saved | eos
    try:
        r = ar.generate(*args, **kwargs)
    finally:
        ar.ar_chunk, ar.eos_ids = 32, saved
    return r.token_ids, r.text, r.steps, r.trace, r.emitted, r.prompt_tokens, ar.target.length


def test_the_step_by_step_path_is_what_chunk_zero_selects():
    """The reference below must be `_step`: with ar_chunk 0 every step goes through it."""
    ar, calls = engine("auto"), []  # the engine `generate` decodes with
    step = ar._step
    ar._step = lambda *a: (calls.append(1), step(*a))[1]
    try:
        assert len(generate(0, PROMPT, 9)[0]) == 9 and len(calls) == 8
        assert len(generate(32, PROMPT, 9)[0]) == 9 and len(calls) == 8  # the chunked path does not call it
    finally:
        del ar._step


@pytest.mark.parametrize("mode", list(SAMPLINGS))
@pytest.mark.parametrize("new", [1, 4, 5, 23, 45])  # inside the first chunk (4), on its edge, past 4 + 8 + 16
def test_chunks_commit_the_step_by_step_tokens(mode, new):
    want = generate(0, PROMPT, new, SAMPLINGS[mode])
    assert generate(32, PROMPT, new, SAMPLINGS[mode]) == want
    assert generate(3, PROMPT, new, SAMPLINGS[mode]) == want  # chunks of 3: every read-back in a new place
    assert len(want[0]) == new and want[-1] == want[-2] + new - 1  # the cache holds all but the pending token


@pytest.mark.parametrize("mode", ["greedy", "t1"])
@pytest.mark.skipif(torch.cuda.is_available(), reason="the Triton verifier on a CPU target needs Triton's interpreter, "
                    "off where CUDA is (tests/test_gpu.py covers the GPU)")
def test_chunks_through_the_triton_verifier_keep_every_token(mode):
    """The Triton verifier reuses its output buffers call after call: a chunk must keep its own tokens.
    tests/test_gpu.py's chunked tests check the same through the compiled kernel."""
    want = generate(0, PROMPT, 23, SAMPLINGS[mode], verifier="triton")
    assert generate(32, PROMPT, 23, SAMPLINGS[mode], verifier="triton") == want


@pytest.mark.parametrize("mode", list(SAMPLINGS))
@pytest.mark.parametrize("at", [2, 9, 20])  # in the first, second and third chunk, never on its last step
def test_an_eos_inside_a_chunk_ends_the_output_there(mode, at):
    full = generate(0, PROMPT, 40, SAMPLINGS[mode])[0]
    eos = {full[at]}
    want = generate(0, PROMPT, 40, SAMPLINGS[mode], eos=eos)
    assert want[0] == full[: full.index(full[at]) + 1]  # the reference did stop: the case tests something
    assert generate(32, PROMPT, 40, SAMPLINGS[mode], eos=eos) == want


@pytest.mark.parametrize("mode", list(SAMPLINGS))
def test_a_stop_string_inside_a_chunk_ends_the_output_there(mode):
    full = generate(0, PROMPT, 40, SAMPLINGS[mode])
    stop = [full[1][14:16]]
    want = generate(0, PROMPT, 40, SAMPLINGS[mode], stop=stop)
    assert len(want[0]) < 40  # the stop string ended it early
    assert generate(32, PROMPT, 40, SAMPLINGS[mode], stop=stop) == want


@pytest.mark.parametrize("mode", list(SAMPLINGS))
def test_a_prompt_near_the_context_limit(mode):
    """The last chunk ends on the context's last slot; nothing is launched past it."""
    new = 21
    prompt = (list(range(1, 40)) * 100)[: engine("auto").target.max_context - new]
    want = generate(0, prompt, new, SAMPLINGS[mode])
    assert generate(32, prompt, new, SAMPLINGS[mode]) == want
    assert want[-1] == engine("auto").target.max_context - 1


def test_one_read_back_per_chunk(monkeypatch):
    """31 steps read their tokens back 4 times (chunks of 4, 8, 16, 3), not 31."""
    reads = []
    tolist = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda t: (reads.append(1), tolist(t))[1])
    generate(0, PROMPT, 32)
    stepwise, reads[:] = len(reads), []
    generate(32, PROMPT, 32)
    assert (stepwise, len(reads)) == (31, 4)
