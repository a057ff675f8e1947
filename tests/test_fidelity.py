"""The engine's greedy output against Hugging Face `generate(do_sample=False)`, over architectures and features.

Tiny random models (2 layers, width 64) of every configuration the engine accepts must give exactly what
`generate` gives, autoregressively and speculatively (a bandit over prompt lookup, a draft model and, on the
native path, a token tree of both, at two gammas), on every backend that takes them, with a prompt that reaches
past sliding windows and RoPE boundaries. The configurations the engine refuses are listed with the reason, and
the test checks the refusal names it. docs/models.md is the table of both.
"""

import copy
import inspect

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM, Phi3ForCausalLM

from flashspec import ArmConfig, BanditConfig, FlashSpecConfig, SamplingConfig, SpeculativeEngine, TargetConfig
from flashspec.arms import Arm, Draft, DraftModelArm, PromptLookupArm
from flashspec.models import HFModel, NativeLlama
from flashspec.models.fidelity import eos_token_ids
from flashspec.models.tiny import tiny_tokenizer

MAX_NEW = 24
CONTEXT = 128
CROSSING = 44  # max_context (the prompt gets max_context - MAX_NEW tokens) whose 20-token prompt crosses 32
WINDOW = 8  # sliding window: the prompts are 5 windows long
NATIVE = ("eager", "static", "hf")  # NativeLlama, its static-shape (graph) step uncaptured, the HF fallback
STATIC = ("static",)  # features the backends share: the static step (trees and the prefill take the eager path)
LLAMA_LIKE = dict(
    vocab_size=259, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.1, bos_token_id=256, eos_token_id=257,
    pad_token_id=258, tie_word_embeddings=False,
)
HALF_DIM = 8  # rotary frequencies per head (head_dim 16)
LONGROPE = {
    "rope_type": "longrope", "rope_theta": 10000.0, "original_max_position_embeddings": 32,
    "short_factor": [1.0] * HALF_DIM, "long_factor": [16.0] * HALF_DIM,  # far apart: a mix-up shows
}
PHI3_LONGROPE = dict(rope_parameters=LONGROPE, max_position_embeddings=CONTEXT, original_max_position_embeddings=32)
DYNAMIC = {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 4.0}
LLAMA3 = {
    "rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    "original_max_position_embeddings": 32,
}

# id -> (config class, config overrides, generation_config overrides, backends, max_context)
CASES = {
    "llama": ("LlamaConfig", {}, {}, STATIC, CONTEXT),
    "llama-tied-bias-headdim-mqa": (
        "LlamaConfig", dict(tie_word_embeddings=True, attention_bias=True, mlp_bias=True, head_dim=32,
                            num_key_value_heads=1), {}, STATIC, CONTEXT),
    "llama-llama3-rope": ("LlamaConfig", dict(rope_parameters=LLAMA3), {}, STATIC, CONTEXT),
    # dynamic NTK and longrope are exact while the context stays within their original length
    "llama-dynamic-within": ("LlamaConfig", dict(rope_parameters=DYNAMIC, max_position_embeddings=64), {}, NATIVE, 64),
    # past it, the native path rotates each token with its own frequencies; the HF fallback refuses (below)
    "llama-dynamic-past": ("LlamaConfig", dict(rope_parameters=DYNAMIC, max_position_embeddings=32), {}, NATIVE[:2],
                           CONTEXT),
    "llama-longrope-crossing": ("LlamaConfig", dict(rope_parameters=LONGROPE, max_position_embeddings=CONTEXT), {},
                                NATIVE[:2], CROSSING),
    "llama-repetition-penalty": ("LlamaConfig", {}, dict(repetition_penalty=1.3), STATIC, CONTEXT),
    "llama-no-repeat-ngram": ("LlamaConfig", {}, dict(no_repeat_ngram_size=3), STATIC, CONTEXT),
    "llama-suppress-tokens": ("LlamaConfig", {}, dict(suppress_tokens=list(range(0, 256, 3))), STATIC, CONTEXT),
    "mistral-window": ("MistralConfig", dict(sliding_window=WINDOW), {}, NATIVE, CONTEXT),
    "qwen2-window-layer1": (
        "Qwen2Config", dict(use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1), {}, NATIVE, CONTEXT),
    "qwen3-window": (
        "Qwen3Config", dict(use_sliding_window=True, sliding_window=WINDOW, max_window_layers=0), {}, NATIVE, CONTEXT),
    "qwen2-repetition-penalty": ("Qwen2Config", {}, dict(repetition_penalty=1.05), STATIC, CONTEXT),
    "gemma": ("GemmaConfig", dict(head_dim=16), {}, ("hf",), CONTEXT),
    "gemma2-window": ("Gemma2Config", dict(head_dim=16, sliding_window=WINDOW), {}, ("hf",), CONTEXT),
    "gemma3-window": ("Gemma3TextConfig", dict(head_dim=16, sliding_window=WINDOW), {}, ("hf",), CONTEXT),
    "phi3": ("Phi3Config", {}, {}, ("hf",), CONTEXT),
    "phi3-longrope-within": ("Phi3Config", PHI3_LONGROPE, {}, ("hf",), 32),
    # past it, the fallback re-encodes the cache as Phi-3's generate does (a 20-token prompt crosses 32)
    "phi3-longrope-crossing": ("Phi3Config", PHI3_LONGROPE, {}, ("hf",), CROSSING),
    "phi3-longrope-past": ("Phi3Config", PHI3_LONGROPE, {}, ("hf",), CONTEXT),
    "mixtral-window": ("MixtralConfig", dict(sliding_window=WINDOW, num_local_experts=4), {}, ("hf",), CONTEXT),
    "starcoder2-window": ("Starcoder2Config", dict(sliding_window=WINDOW), {}, ("hf",), CONTEXT),
    "olmo2": ("Olmo2Config", {}, {}, ("hf",), CONTEXT),
    "gpt_neox": ("GPTNeoXConfig", {}, {}, ("hf",), CONTEXT),
    "gpt2": ("GPT2Config", dict(n_embd=64, n_layer=2, n_head=4, n_positions=256), {}, ("hf",), CONTEXT),
    "cohere2-window": ("Cohere2Config", dict(sliding_window=WINDOW), {}, ("hf",), CONTEXT),
    "gpt_oss-window": ("GptOssConfig", dict(num_local_experts=4, sliding_window=WINDOW, head_dim=16), {}, ("hf",),
                       CONTEXT),
    "exaone4-window": ("Exaone4Config", dict(sliding_window=WINDOW), {}, ("hf",), CONTEXT),
    "qwen2_moe": ("Qwen2MoeConfig", dict(num_experts=4, moe_intermediate_size=32, shared_expert_intermediate_size=64),
                  {}, ("hf",), CONTEXT),
    "smollm3": ("SmolLM3Config", {}, {}, ("hf",), CONTEXT),
    "phi": ("PhiConfig", {}, {}, ("hf",), CONTEXT),
    "falcon": ("FalconConfig", {}, {}, ("hf",), CONTEXT),
    "opt": ("OPTConfig", dict(ffn_dim=128, word_embed_proj_dim=64), {}, ("hf",), CONTEXT),
    "bloom": ("BloomConfig", dict(n_layer=2, n_head=4), {}, ("hf",), CONTEXT),
    "gptj": ("GPTJConfig", dict(n_embd=64, n_layer=2, n_head=4, rotary_dim=8), {}, ("hf",), CONTEXT),
}

# id -> (config class, config overrides, generation_config overrides, max_context, what the refusal names);
# all on the HF fallback (the native path rotates dynamic and longrope tokens one by one: CASES above)
LFM2 = dict(layer_types=["conv", "full_attention"])  # a convolution state per layer: no rollback
REFUSED = {
    "lfm2-speculation": ("Lfm2Config", LFM2, {}, CONTEXT, "cache layers .* cannot be cropped"),
    "llama-dynamic-past-original": (
        "LlamaConfig", dict(rope_parameters=DYNAMIC, max_position_embeddings=32), {}, CONTEXT, "rope_type='dynamic'"),
    "llama-longrope-past-original": (
        "LlamaConfig", dict(rope_parameters=LONGROPE, max_position_embeddings=CONTEXT), {}, CONTEXT,
        "rope_type='longrope'"),
    "bad-words-ids": ("LlamaConfig", {}, dict(bad_words_ids=[[5]]), CONTEXT, "generation_config.bad_words_ids"),
    "min-new-tokens": ("LlamaConfig", {}, dict(min_new_tokens=4), CONTEXT, "generation_config.min_new_tokens"),
}


def build(config_class: str, overrides: dict, generation: dict, seed: int = 0):
    config = getattr(transformers, config_class)(**(LLAMA_LIKE | overrides))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config).eval()
    for key, value in generation.items():
        setattr(model.generation_config, key, value)
    return model


def noisy_copy(model, scale: float = 0.05):
    """A draft that agrees with the target often but not always."""
    draft = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(1)
        for p in draft.parameters():
            p.add_(torch.randn_like(p) * p.std() * scale)
    return draft


def prompt(seed: int, period: int = 7, repeats: int = 6) -> list[int]:
    """A repeated random phrase: prompt lookup finds matches, and 42 tokens reach past every window and RoPE
    boundary."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (period,), generator=g).tolist() * repeats


PROMPTS = [prompt(0)]


def reference(model, ids: list[int], **kwargs) -> list[int]:
    x = torch.tensor([ids], device=model.device)
    out = model.generate(
        x, attention_mask=torch.ones_like(x), max_new_tokens=MAX_NEW, do_sample=False, pad_token_id=258, **kwargs
    )
    return out[0, len(ids):].tolist()


def target(model, backend: str, max_context: int):
    if backend == "hf":
        return HFModel(model, max_context)
    return NativeLlama(model, max_context, graphs=backend == "static")


class Fork(Arm):
    """A token tree of two branches from the pending token, a chain from each of two arms, gamma nodes in all."""

    name, tree = "fork", True

    def __init__(self, *arms: Arm) -> None:
        self.arms = arms

    def begin(self, prompt):
        for arm in self.arms:
            arm.begin(prompt)

    def propose(self, context, gamma, sampling, generator) -> Draft:
        sizes = [(gamma + 1) // 2, gamma // 2]
        chains = [arm.propose(context, k, sampling, generator).tokens for arm, k in zip(self.arms, sizes, strict=True)]
        parents, start = [], 0
        for chain in (c for c in chains if len(c)):
            parents += [-1, *range(start, start + len(chain) - 1)]
            start += len(chain)
        return Draft(torch.cat([c.cpu() for c in chains]), parents=torch.tensor(parents, dtype=torch.long))


def engine(model, backend: str, max_context: int, speculative: bool) -> SpeculativeEngine:
    """Autoregressive, or a UCB1 bandit at gammas 2 and 5 over prompt lookup, a draft model and (targets that
    verify token trees) a tree of both."""
    policy = "ucb1" if speculative else "none"
    cfg = FlashSpecConfig(
        target=TargetConfig(max_context=max_context, device=str(model.device)), arms=[ArmConfig()], gammas=[2, 5],
        bandit=BanditConfig(policy, reward="accepted_tokens"),
    )
    arms = []
    if speculative:
        draft = lambda: DraftModelArm(HFModel(noisy_copy(model), max_context))  # noqa: E731
        arms = [PromptLookupArm(), draft()] + ([Fork(PromptLookupArm(), draft())] if backend != "hf" else [])
    return SpeculativeEngine(cfg, target=target(model, backend, max_context), tokenizer=tiny_tokenizer(), arms=arms)


# Transformers 5.17's Phi-3 generate drops the cache at the longrope switch but still feeds only the last token;
# 5.24 also resets next_sequence_length and re-encodes the sequence, which is what the engine reproduces.
PHI3_REENCODES = "next_sequence_length" in inspect.getsource(Phi3ForCausalLM.prepare_inputs_for_generation)


@pytest.mark.parametrize("case", list(CASES))
def test_identical_to_generate(case):
    if case == "phi3-longrope-crossing" and not PHI3_REENCODES:
        pytest.skip(f"transformers {transformers.__version__}'s Phi-3 generate feeds one token to an emptied cache at "
                    "the longrope switch: no exact reference to compare with (5.24 re-encodes)")
    config_class, overrides, generation, backends, max_context = CASES[case]
    model = build(config_class, overrides, generation)
    prompts = [p[: max_context - MAX_NEW] for p in PROMPTS]
    expected = [reference(model, p) for p in prompts]
    accepted = 0
    for backend in backends:
        for speculative in (False, True):
            spec = engine(model, backend, max_context, speculative)
            for p, want in zip(prompts, expected, strict=True):
                out = spec.generate(p, MAX_NEW)
                assert out.token_ids == want, (case, backend, speculative, p)
                assert 1 + sum(out.emitted) == out.new_tokens
                accepted += sum(a.accepted for a in out.arms.values())
    assert accepted > 0, "no draft token was ever accepted: the speculative comparison proved nothing"


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_at_load_naming_the_feature(case):
    config_class, overrides, generation, max_context, feature = REFUSED[case]
    model = build(config_class, overrides, generation)
    with pytest.raises(ValueError, match=feature) as err:
        engine(model, "hf", max_context, speculative=True)
    assert "\n" not in str(err.value)


def test_uncroppable_cache_decodes_autoregressively():
    model = build("Lfm2Config", LFM2, {})
    assert engine(model, "hf", CONTEXT, speculative=False).generate(PROMPTS[0], MAX_NEW).token_ids == reference(
        model, PROMPTS[0]
    )


@pytest.mark.parametrize(("config_class", "backend"), [("LlamaConfig", "eager"), ("Gemma2Config", "hf")])
def test_stops_at_generation_config_eos_like_generate(config_class, backend):
    """generate stops at generation_config.eos_token_id only (the tokenizer's EOS, 257, is not among them)."""
    model = build(config_class, dict(head_dim=16, sliding_window=WINDOW), {})
    free = reference(model, PROMPTS[0])
    model.generation_config.eos_token_id = [free[5], 300]  # a token first generated mid-way
    want = reference(model, PROMPTS[0])
    assert len(want) < MAX_NEW
    for speculative in (False, True):
        out = engine(model, backend, CONTEXT, speculative).generate(PROMPTS[0], MAX_NEW)
        assert out.token_ids == want
        assert 1 + sum(out.emitted) == out.new_tokens


@pytest.mark.parametrize("speculative", [False, True])
def test_sampled_output_follows_the_processed_distribution(speculative):
    """Sampling draws from the processed distribution too: with no_repeat_ngram_size=2 no bigram comes back."""
    model = build("LlamaConfig", {}, dict(no_repeat_ngram_size=2))
    sampling = SamplingConfig(temperature=0.3, seed=3)  # without the processor this repeats bigrams
    ids = PROMPTS[0] + engine(model, "static", CONTEXT, speculative).generate(PROMPTS[0], MAX_NEW, sampling).token_ids
    bigrams = list(zip(ids, ids[1:], strict=False))
    assert len(set(bigrams[len(PROMPTS[0]) - 1 :])) == MAX_NEW
    assert not set(bigrams[len(PROMPTS[0]) - 1 :]) & set(bigrams[: len(PROMPTS[0]) - 1])


def test_eos_ids_fall_back_to_the_tokenizer():
    tokenizer, model = tiny_tokenizer(), build("LlamaConfig", {}, {})
    model.generation_config.eos_token_id = 7
    assert eos_token_ids(tokenizer, model) == {7}
    model.generation_config.eos_token_id = None
    assert eos_token_ids(tokenizer, model) == {tokenizer.eos_token_id}


@pytest.mark.parametrize("backend", ["static", "hf"])
def test_stop_string_cuts_token_ids_like_generate(backend):
    """Tokens up to the one that completes the stop string, as generate's StopStringCriteria keeps them."""
    model, tokenizer = build("LlamaConfig", {}, {}), tiny_tokenizer()
    free = reference(model, PROMPTS[0])
    # two tokens whose text first appears at the second of them
    text = tokenizer.decode
    end = next(k + 2 for k in range(3, MAX_NEW) if text(free[k : k + 2]) not in text(free[: k + 1]))
    stop = text(free[end - 2 : end])
    want = reference(model, PROMPTS[0], stop_strings=[stop], tokenizer=tokenizer)
    assert len(want) == end
    for speculative in (False, True):
        out = engine(model, backend, CONTEXT, speculative).generate(PROMPTS[0], MAX_NEW, stop=[stop])
        assert out.token_ids == want
        assert 1 + sum(out.emitted) == out.new_tokens
        assert stop not in out.text


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs and the compiled layer need a GPU")
@pytest.mark.parametrize("case", ["mistral-window", "qwen2-window-layer1", "llama-dynamic-past"])
def test_captured_graph_steps_match_generate_on_cuda(case):
    """The static step as it runs on a GPU (compiled, captured), with the per-layer window masks."""
    config_class, overrides, generation, _, max_context = CASES[case]
    model = build(config_class, overrides, generation).cuda()
    want = reference(model, PROMPTS[0])
    for speculative in (False, True):
        out = engine(model, "static", max_context, speculative).generate(PROMPTS[0], MAX_NEW)
        assert out.token_ids == want, speculative
