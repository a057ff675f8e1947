"""On the GPU only: the Triton verifiers compiled (and inside a captured CUDA graph) against the PyTorch
references, and greedy losslessness in bf16 through the engine's real fast path (static cache, captured CUDA
graphs, compiled layer) for every arm kind and two bandits, on the trained family (results/models) and on a
random-weight Llama-3-8B-shape model (4 of its layers) with the large-margin trick of scripts/bench_h100.py;
and decoding without drafts chunk by chunk (no host sync per token) against the step-by-step path there.

    make test-gpu        # the whole suite on CUDA, this file included
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_tree_verify import random_case
from test_verify import assert_same_outcome, make_inputs

from flashspec import ArmConfig, BanditConfig, FlashSpecConfig, SamplingConfig, SpeculativeEngine, TargetConfig
from flashspec.arms import DraftModelArm, EagleArm, MedusaArm, PromptLookupArm, StreamingArm, build_arm
from flashspec.bench.measure import count_syncs
from flashspec.drafters.eagle import EagleHead, head_config
from flashspec.drafters.medusa import MedusaHeads, sparse_tree
from flashspec.drafters.streaming import StreamingDrafter
from flashspec.engine import AR_CHUNK
from flashspec.models import load_model, smollm2
from flashspec.models.native import NativeLlama
from flashspec.models.tiny import tiny_tokenizer
from flashspec.verify import verify_reference, verify_tree_reference, verify_tree_triton, verify_triton

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

ROOT = Path(__file__).resolve().parents[1]
FAMILY = ROOT / "results" / "models"
CUDA = torch.device("cuda")
VOCAB = 128256  # Llama 3's
SAMPLINGS = {"greedy": SamplingConfig(), "t1": SamplingConfig(1.0), "topk_topp": SamplingConfig(0.7, 50, 0.9)}
NEW_TOKENS = 40


# ------------------------------------------------------------------ the kernels against the references
@pytest.mark.parametrize("n", [1, 5, 16, 64])
@pytest.mark.parametrize(("mode", "stochastic"), [("greedy", False), ("t1", False), ("t1", True),
                                                  ("topk_topp", True)])
def test_tree_kernel_is_the_reference(n, mode, stochastic):
    """Trees of 1 to 64 nodes over Llama 3's vocabulary: the same accepted path, bit for bit, on the same
    uniforms (the GPU's launch shape: many chunks per row)."""
    depths = []
    for seed in range(6):
        case = random_case(n, VOCAB, seed, stochastic, device=CUDA)
        expected = verify_tree_reference(*case[:4], SAMPLINGS[mode], case[4])
        got = verify_tree_triton(*case[:4], SAMPLINGS[mode], case[4])
        assert [t.tolist() for t in got] == [t.tolist() for t in expected], (n, mode, seed)
        depths.append(int(expected[0]))
    assert max(depths) > 0 or n == 1 or mode != "greedy", "nothing was accepted: the comparison proved little"


@pytest.mark.parametrize("mode", ["greedy", "topk_topp"])
def test_tree_kernel_in_a_cuda_graph(mode):
    """Captured once, replayed on new trees (logits, tokens, parents, uniforms written into its inputs; the
    parents on the device, as a host copy cannot be captured)."""
    sampling, n = SAMPLINGS[mode], 16
    inputs = [None if t is None else t.to(CUDA, copy=True) for t in random_case(n, VOCAB, 0, mode != "greedy")]
    verify_tree_triton(*inputs[:4], sampling, inputs[4])  # compiles outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = verify_tree_triton(*inputs[:4], sampling, inputs[4])
    for seed in range(1, 5):
        case = random_case(n, VOCAB, seed, mode != "greedy", device=CUDA)
        for buffer, value in zip(inputs, case, strict=True):
            if buffer is not None:
                buffer.copy_(value)
        graph.replay()
        expected = verify_tree_reference(*case[:4], sampling, case[4])
        assert [t.tolist() for t in outputs] == [t.tolist() for t in expected], seed


@pytest.mark.parametrize("mode", ["greedy", "topk_topp"])
def test_chain_kernel_in_a_cuda_graph(mode):
    sampling = SAMPLINGS[mode]
    inputs = make_inputs(2, 4, VOCAB, sampling, True, seed=0, device=CUDA)
    verify_triton(*inputs[:3], sampling, inputs[3])
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = verify_triton(*inputs[:3], sampling, inputs[3])
    for seed in range(1, 5):
        case = make_inputs(2, 4, VOCAB, sampling, True, seed=seed, device=CUDA)
        for buffer, value in zip(inputs, case, strict=True):
            buffer.copy_(value)
        graph.replay()
        assert_same_outcome(outputs, verify_reference(*case[:3], sampling, case[3]))


# ------------------------------------------------------------------ greedy losslessness through the fast path
def first_difference(engine: SpeculativeEngine, prompt, ours: list[int], theirs: list[int]) -> str:
    """Where two greedy outputs part, and the target's top-2 logit margin there (eager, bf16): a margin
    within bf16 rounding means the block shapes' different kernels, not the verifier, decided."""
    i = next(i for i, (a, b) in enumerate(zip(ours + [-1], theirs + [-1], strict=False)) if a != b)
    ids = engine._encode(prompt, 1).tolist() + theirs[:i]
    engine.target.reset()
    top = engine.target.forward(torch.tensor(ids)).logits[-1].float().topk(2).values
    return f"first differs at new token {i}: {ours[i:i + 3]} vs AR {theirs[i:i + 3]}, AR's top-2 margin " \
           f"{float(top[0] - top[1]):.4f}"


def check_lossless(target, tokenizer, arms: dict, prompts: list, policies: list[str], accepting: set[str],
                   new_tokens: int = NEW_TOKENS):
    """Every arm alone (bandit `fixed`) and all of them under each bandit policy: greedy output equal to the
    engine's own autoregressive output; the arms in `accepting` must get drafts accepted."""
    cfg = TargetConfig(device=target.device.type, dtype="bfloat16", max_context=target.max_context)
    ar = SpeculativeEngine(FlashSpecConfig(cfg, bandit=BanditConfig("none")), target=target, tokenizer=tokenizer)
    expected = [ar.generate(p, new_tokens).token_ids for p in prompts]
    runs = {name: ([arm], BanditConfig("fixed"), gamma) for name, (arm, gamma) in arms.items()}
    everyone = [arm for arm, _ in arms.values()]
    runs |= {policy: (everyone, BanditConfig(policy), 4) for policy in policies}
    for run, (run_arms, bandit, gamma) in runs.items():
        engine = SpeculativeEngine(FlashSpecConfig(cfg, gammas=[gamma], bandit=bandit), target=target,
                                   tokenizer=tokenizer, arms=run_arms)
        accepted = 0
        for prompt, want in zip(prompts, expected, strict=True):
            got = engine.generate(prompt, new_tokens)
            assert got.token_ids == want, f"{run}: {first_difference(ar, prompt, got.token_ids, want)}"
            accepted += sum(s.accepted for s in got.arms.values())
        assert accepted > 0 or run not in accepting, f"{run}: no draft accepted, the comparison proved little"


@pytest.fixture(scope="module")
def family():
    if not (FAMILY / "flashspec-target").is_dir():
        pytest.skip(f"no trained family in {FAMILY}")
    cfg = TargetConfig(model=str(FAMILY / "flashspec-target"), device="cuda", dtype="bfloat16")
    target, tokenizer = load_model(cfg.model, cfg)
    assert isinstance(target, NativeLlama) and target.graphs and target.compiled, "not the fast path"
    return target, tokenizer, cfg


def test_trained_family_is_lossless_in_bf16(family):
    target, tokenizer, cfg = family
    kinds = {  # name -> arm config, gamma (tree arms: nodes)
        "prompt_lookup": (ArmConfig("prompt_lookup"), 4),
        "draft_model": (ArmConfig("draft_model", str(FAMILY / "flashspec-draft-s")), 4),
        "medusa_tree": (ArmConfig("medusa", str(FAMILY / "flashspec-medusa")), 16),
        "eagle_chain": (ArmConfig("eagle", str(FAMILY / "flashspec-eagle"), params={"top_k": 1}), 4),
        "eagle_tree": (ArmConfig("eagle", str(FAMILY / "flashspec-eagle"), params={"top_k": 4}), 16),
        "streaming": (ArmConfig("streaming", str(FAMILY / "flashspec-streaming")), 4),
    }
    arms = {}
    for name, (arm_cfg, gamma) in kinds.items():
        arms[name] = (build_arm(arm_cfg, target, tokenizer, cfg), gamma)
        arms[name][0].name = name
    prompts = ["The cat sat on the mat. The cat sat on the mat. The cat sat on the",
               "Write a Python function that returns the sum of a list of numbers."]
    check_lossless(target, tokenizer, arms, prompts, ["ucb1", "thompson"], accepting=set(kinds))


@pytest.fixture(scope="module")
def bench():
    """The GPU bench's shapes (flashspec/bench/shapes.py), with an 8B shape of 4 layers (and a small untied
    draft) added."""
    from flashspec.bench import shapes

    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(shapes.SHAPES, "llama3-8b-4", shapes.SHAPES["llama3-8b"] | {"num_hidden_layers": 4})
        # Untied, its head is its embedding shifted by one row too: it continues x -> x + 1 as the target does.
        patch.setitem(shapes.SHAPES, "draft", shapes.SHAPES["llama3.2-1b"]
                      | {"num_hidden_layers": 2, "tie_word_embeddings": False})
        yield shapes


def test_random_8b_shape_is_lossless_in_bf16(bench):
    hf = bench.random_llama("llama3-8b-4")
    target = NativeLlama(hf, bench.CONTEXT, graphs=True)
    draft = NativeLlama(bench.random_llama("draft", seed=1), bench.CONTEXT, graphs=True)
    lm_head = hf.get_output_embeddings()
    with torch.device(target.device):  # random drafters of this shape: lossless whatever they draft
        medusa = MedusaHeads(lm_head.weight, n_heads=4, rank=4).to(torch.bfloat16)
        eagle = EagleHead(head_config(hf.config)).to(torch.bfloat16).eval()
        streaming = StreamingDrafter(hf, n_layers=2, n_streams=4).eval()
    accuracy = [[0.5 ** (d + 1) * 0.6**r for r in range(4)] for d in range(4)]
    arms = {
        "prompt_lookup": (PromptLookupArm(3, 1), 4),
        "draft_model": (DraftModelArm(draft, name="draft_model"), 4),
        "medusa_tree": (MedusaArm(medusa, sparse_tree(accuracy, 16), target.max_context, name="medusa_tree"), 16),
        "eagle_chain": (EagleArm(eagle, hf.get_input_embeddings(), lm_head, target.max_context, 1,
                                 name="eagle_chain"), 4),
        "eagle_tree": (EagleArm(eagle, hf.get_input_embeddings(), lm_head, target.max_context, 4,
                                name="eagle_tree"), 16),
        "streaming": (StreamingArm(streaming, target, name="streaming"), 4),
    }
    # The model continues x -> x + 1: a ramp, then a restart inside it, which prompt lookup can continue.
    prompts = [torch.cat([torch.arange(1000, 1064), torch.arange(1010, 1020)]), bench.prompt_ids(24)]
    check_lossless(target, tiny_tokenizer(), arms, prompts, ["ucb1", "thompson"],
                   accepting={"prompt_lookup", "draft_model", "ucb1", "thompson"})


@pytest.mark.skipif(not (smollm2.model_dir() / smollm2.SOURCE).is_file(),
                    reason=f"the converted SmolLM2 is not in FLASHSPEC_CACHE: run {smollm2.FETCH_COMMAND}")
@pytest.mark.parametrize("nodes", [4, 16])  # the bandit study's trees, and the arms' usual size
def test_real_smollm2_token_trees_keep_the_autoregressive_output(nodes):
    """Issue 12: on the real SmolLM2 the EAGLE and Medusa trees left AR's greedy output (20 of 40 rows with SDPA
    behind a mask; at 040dc27, with the decode kernel reading the nodes where the block put them, Medusa 20 and
    EAGLE 24 of 32 prompts kept it, chains 32 of 32): a node's attention summed in another order than the
    one-token step's, and an exact bf16 tie between two logits broke the other way. Random drafters' trees
    (nearly all rejected: each step scores a tree to keep one token), over 128 tokens of two chat prompts, with
    prompt lookup's chain beside them as the control that accepts (the second prompt asks for repetition)."""
    cfg = TargetConfig(model=str(smollm2.model_dir()), device="cuda", dtype="bfloat16")
    target, tokenizer = load_model(cfg.model, cfg)
    assert isinstance(target, NativeLlama) and target.static_trees, "not the static tree step"
    hf = target.model
    lm_head = hf.get_output_embeddings()
    with torch.device(target.device):
        medusa = MedusaHeads(lm_head.weight, n_heads=4, rank=4).to(torch.bfloat16)
        eagle = EagleHead(head_config(hf.config)).to(torch.bfloat16).eval()
    accuracy = [[0.5 ** (d + 1) * 0.6**r for r in range(4)] for d in range(4)]
    arms = {
        "prompt_lookup": (PromptLookupArm(3, 1), 4),
        "medusa_tree": (MedusaArm(medusa, sparse_tree(accuracy, nodes), target.max_context, name="medusa_tree"),
                        nodes),
        "eagle_tree": (EagleArm(eagle, hf.get_input_embeddings(), lm_head, target.max_context, 4,
                                name="eagle_tree"), nodes),
    }
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                             return_dict=False)
               for text in ("Write a Python function that checks whether a number is prime.",
                            "Repeat this sentence three times: the quick brown fox jumps over the lazy dog.")]
    check_lossless(target, tokenizer, arms, prompts, [], accepting={"prompt_lookup"}, new_tokens=128)


# ------------------------------------------------------------------ decoding without drafts, chunk by chunk
def test_an_eagle_draft_waits_on_the_device_once_at_most(family):
    """EAGLE drafts without blocking copies from the host: a plain copy of a host tensor to the device waits for
    the device's queue, and with three a head forward the queue drained at every depth (a draft took ~10 ms of a
    ~1 ms target step on the H200: results/gpu/smollm2/bandit_replay/costs.json). A tree's one wait is its
    read-back, a chain's none."""
    target, tokenizer, _ = family
    hf = target.model
    head = EagleHead(head_config(hf.config)).to(device=CUDA, dtype=hf.dtype).eval()
    context = torch.as_tensor(tokenizer("The cat sat on the mat. The cat sat on the")["input_ids"])
    for top_k, allowed in ((4, 1), (1, 0)):
        arm = EagleArm(head, hf.get_input_embeddings(), hf.get_output_embeddings(), target.max_context, top_k, 6)
        target.reset()
        arm.begin(context[:-1])
        arm.observe_target(0, target.forward(context[:-1].to(CUDA)))
        arm.propose(context, 4, SamplingConfig(), None)
        syncs = count_syncs(lambda a=arm: a.propose(context, 4, SamplingConfig(), None))
        assert syncs <= allowed, f"top_k={top_k}: {syncs} host-device synchronisations in one draft"


def check_chunked_autoregressive(target, tokenizer, prompts: list) -> None:
    """bf16 on the captured graphs: the chunked path (each step fed the last one's token on the device, the
    tokens read back once a chunk) commits the step-by-step path's tokens (ar_chunk = 0, one sync per token)
    with the same bookkeeping and cache length, in every sampling mode, with the end inside a chunk (a budget
    of 23, an EOS at new token 9), and synchronises with the host 27 times less in 31 steps."""
    cfg = TargetConfig(device="cuda", dtype="bfloat16", max_context=target.max_context)
    engine = SpeculativeEngine(FlashSpecConfig(cfg, bandit=BanditConfig("none")), target=target, tokenizer=tokenizer)
    # The compiled Triton verifier, whose output tensors the next call overwrites: a chunk that kept them instead
    # of its own token tensors would read back its last token in every place.
    assert engine.verify is verify_triton
    eos = engine.eos_ids

    def run(chunk: int, prompt, new: int, sampling: SamplingConfig, extra_eos: set[int] = frozenset()) -> tuple:
        engine.ar_chunk, engine.eos_ids = chunk, eos | extra_eos
        r = engine.generate(prompt, new, sampling)
        return r.token_ids, r.steps, r.trace, r.emitted, target.length

    for prompt in prompts:
        for name, sampling in SAMPLINGS.items():
            full = run(0, prompt, NEW_TOKENS, sampling)
            assert run(AR_CHUNK, prompt, NEW_TOKENS, sampling) == full, name
            assert run(AR_CHUNK, prompt, 23, sampling) == run(0, prompt, 23, sampling), name
            if len(full[0]) > 9:
                at = {full[0][9]}
                assert run(AR_CHUNK, prompt, NEW_TOKENS, sampling, at) == run(0, prompt, NEW_TOKENS, sampling, at), name
    syncs = {chunk: count_syncs(lambda c=chunk: run(c, prompts[0], 32, SamplingConfig())) for chunk in (0, AR_CHUNK)}
    assert syncs[AR_CHUNK] <= syncs[0] - 27, syncs  # 31 steps: 31 reads one by one, 4 in chunks of 4, 8, 16, 3


def test_chunked_autoregressive_decoding_is_the_step_by_step_one(bench):
    target = NativeLlama(bench.random_llama("llama3-8b-4"), bench.CONTEXT, graphs=True)
    check_chunked_autoregressive(target, tiny_tokenizer(), [bench.prompt_ids(24), bench.prompt_ids(100)])


def test_chunked_autoregressive_decoding_on_the_trained_family(family):
    """A trained model's sampled tokens depend on the uniforms, unlike the random shape's peaked ones."""
    target, tokenizer, _ = family
    check_chunked_autoregressive(target, tokenizer, ["The cat sat on the mat. The cat sat on the",
                                                     "Write a Python function that returns the sum of a list."])
