"""Medusa-1, EAGLE-1/2 and EAGLE-3 heads as their authors release them, written here in exactly their layouts
(file names, key names, dtypes, config.json fields; docs/baselines.md names the code they come from): each
loads through build_arm, drafts, decodes losslessly (greedy = autoregressive), and its first-token
predictions equal those of a from-scratch port of the authors' forward pass (the `official_*` functions),
which reads the files itself. Heads that do not fit the target are refused in one line."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from test_engine_lossless import PROMPTS
from transformers import LlamaConfig, LlamaForCausalLM

from flashspec import ArmConfig, BanditConfig, FlashSpecConfig, SamplingConfig, SpeculativeEngine, TargetConfig
from flashspec.arms import build_arm
from flashspec.drafters.medusa import OFFICIAL_TREE
from flashspec.models import load_model
from flashspec.models.tiny import tiny_tokenizer

MAX_CONTEXT, MAX_NEW = 128, 16
HALF = torch.float16  # the dtype their released heads are stored in


@pytest.fixture(scope="module")
def target():
    return load_model("tiny", TargetConfig(max_context=MAX_CONTEXT))


@pytest.fixture(scope="module")
def deep_target(tmp_path_factory):
    """An 8-layer tiny Llama: EAGLE-3 reads the inputs of layers 2, 4 and 5 (2, L // 2, L - 3)."""
    config = LlamaConfig(vocab_size=259, hidden_size=64, intermediate_size=128, num_hidden_layers=8,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         initializer_range=0.1, bos_token_id=256, eos_token_id=257, pad_token_id=258)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        model = LlamaForCausalLM(config).eval()
    path = tmp_path_factory.mktemp("deep")
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return load_model(str(path), TargetConfig(max_context=MAX_CONTEXT))


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def noise(shape, seed: int, scale: float = 0.05) -> torch.Tensor:
    return torch.randn(shape, generator=generator(seed)) * scale


# ---------------------------------------------------------------- the layouts, as the authors' code writes them


def write_medusa(path, target_config, lm_head: torch.Tensor, heads: int = 4, layers: int = 1,
                 safetensors: bool = False, vocab: int | None = None) -> dict:
    """Medusa-1 (medusa/model/medusa_model.py): head k = Sequential(ResBlock * layers, Linear(D, V, bias=False)),
    saved as medusa_head.state_dict() in medusa_lm_head.pt (.safetensors from their trainer), and MedusaConfig."""
    d = target_config.hidden_size
    state = {}
    for k in range(heads):
        for j in range(layers):  # their `[ResBlock(h)] * layers` is one module: every j holds the same tensors
            state[f"{k}.{j}.linear.weight"] = noise((d, d), 10 * k)
            state[f"{k}.{j}.linear.bias"] = noise((d,), 10 * k + 1)
        weight = lm_head.detach().clone() + noise(lm_head.shape, 10 * k + 2, 0.02)
        state[f"{k}.{layers}.weight"] = weight if vocab is None else noise((vocab, d), 3)
    state = {k: v.to(HALF) for k, v in state.items()}
    config = {"base_model_name_or_path": "tiny", "medusa_num_heads": heads, "medusa_num_layers": layers,
              "transformers_version": "4.34.0"}
    return write_checkpoint(path, state, config, "medusa_lm_head.safetensors" if safetensors else "medusa_lm_head.pt")


def llama_config_json(target_config, **extra) -> dict:
    """EAGLE's config.json (eagle/train/vicuna_7B_config.json, eagle/traineagle3/config.json): the base model's
    Llama config with one layer."""
    return {"architectures": ["LlamaForCausalLM"], "bos_token_id": 256, "eos_token_id": 257,
            "hidden_act": "silu", "hidden_size": target_config.hidden_size, "initializer_range": 0.02,
            "intermediate_size": 2 * target_config.hidden_size, "max_position_embeddings": 2048,
            "model_type": "llama", "num_attention_heads": target_config.num_attention_heads,
            "num_key_value_heads": target_config.num_key_value_heads, "num_hidden_layers": 1, "pad_token_id": 0,
            "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": False, "torch_dtype": "float16",
            "transformers_version": "4.28.1", "vocab_size": target_config.vocab_size, **extra}


def attention_state(prefix: str, config: dict, width_in: int, seed: int) -> dict:
    d, ffn = config["hidden_size"], config["intermediate_size"]
    hd = d // config["num_attention_heads"]
    kv = config["num_key_value_heads"] * hd
    shapes = {"self_attn.q_proj.weight": (d, width_in), "self_attn.k_proj.weight": (kv, width_in),
              "self_attn.v_proj.weight": (kv, width_in), "self_attn.o_proj.weight": (d, d),
              "mlp.gate_proj.weight": (ffn, d), "mlp.up_proj.weight": (ffn, d), "mlp.down_proj.weight": (d, ffn)}
    state = {prefix + k: noise(s, seed + i, 1 / math.sqrt(s[1])) for i, (k, s) in enumerate(shapes.items())}
    state[prefix + "post_attention_layernorm.weight"] = 1 + noise((d,), seed + 20)
    return state


def write_eagle(path, hf, safetensors: bool = False, **config_extra) -> dict:
    """EAGLE-1/2 (eagle/model/cnets1.py Model, saved whole): fc over [embedding; feature] with bias, layers.0
    without input_layernorm, and the base model's embed_tokens."""
    config = llama_config_json(hf.config, **config_extra)
    d = config["hidden_size"]
    state = {"fc.weight": torch.cat([noise((d, d), 1, 0.3), torch.eye(d) + noise((d, d), 2, 0.05)], 1),
             "fc.bias": noise((d,), 3), "embed_tokens.weight": hf.get_input_embeddings().weight.detach().clone(),
             **attention_state("layers.0.", config, d, 100)}
    state = {k: v.to(HALF) for k, v in state.items()}
    return write_checkpoint(path, state, config, "model.safetensors" if safetensors else "pytorch_model.bin")


def write_eagle3(path, hf, draft_vocab: int = 200, t2d_size: int | None = None) -> dict:
    """EAGLE-3 (eagle/model/cnets.py Model; d2t/t2d as eagle/traineagle3/cnets.py builds them): fc over the
    three fused features, midlayer (q, k, v over [embedding; feature], hidden_norm), norm, lm_head over the
    draft vocabulary; no embed_tokens (their loader takes the base model's)."""
    vocab, d = hf.config.vocab_size, hf.config.hidden_size
    config = llama_config_json(hf.config, draft_vocab_size=draft_vocab)
    used = sorted(torch.randperm(vocab, generator=generator(4))[:draft_vocab].tolist())
    d2t = torch.tensor([used[i] - i for i in range(draft_vocab)])
    t2d = torch.tensor([i in used for i in range(t2d_size or vocab)])
    # fc takes mostly the high feature (an early exit of the target), so drafts are right now and then
    high = torch.zeros(d, 3 * d)
    high[:, 2 * d:] = torch.eye(d)
    state = {"fc.weight": high + noise((d, 3 * d), 5, 0.02), "norm.weight": hf.model.norm.weight.detach().clone(),
             "lm_head.weight": hf.get_output_embeddings().weight.detach()[used].clone(),
             "midlayer.hidden_norm.weight": 1 + noise((d,), 6), "midlayer.input_layernorm.weight": 1 + noise((d,), 7),
             **attention_state("midlayer.", config, 2 * d, 200)}
    state["midlayer.mlp.down_proj.weight"] *= 0.1
    state["midlayer.self_attn.o_proj.weight"] *= 0.1
    state = {k: v.to(HALF) for k, v in state.items()} | {"d2t": d2t, "t2d": t2d}
    return write_checkpoint(path, state, config, "pytorch_model.bin")


def write_checkpoint(path: Path, state: dict, config: dict, weights: str) -> dict:
    """The folder as the authors' code writes it: the weights file (safetensors, or torch.save for .pt/.bin) and
    config.json; returns the state."""
    path.mkdir(parents=True)
    if weights.endswith(".safetensors"):
        save_file(state, path / weights)
    else:
        torch.save(state, path / weights)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    return state


# ---------------------------------------------------------------- the authors' forward passes, ported


def official_medusa(state: dict, hidden: torch.Tensor, heads: int, layers: int) -> torch.Tensor:
    """medusa_model.py: medusa_head[k](hidden) = Linear(ResBlock(...(hidden))), ResBlock(x) = x + SiLU(Wx + b)."""
    out = []
    for k in range(heads):
        x = hidden
        for j in range(layers):
            x = x + F.silu(F.linear(x, state[f"{k}.{j}.linear.weight"].float(), state[f"{k}.{j}.linear.bias"].float()))
        out.append(F.linear(x, state[f"{k}.{layers}.weight"].float()))
    return torch.stack(out)


def rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight.float() * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def official_attention(state: dict, prefix: str, h: torch.Tensor, config: dict) -> torch.Tensor:
    """cnets LlamaAttention over h [n, *] at positions 0..n-1, causal: rotate_half RoPE with base rope_theta
    and head_dim = hidden / heads, repeat_kv, softmax(q k^T / sqrt(hd) + mask) v, o_proj."""
    n, heads, kv = len(h), config["num_attention_heads"], config["num_key_value_heads"]
    hd = config["hidden_size"] // heads
    q = F.linear(h, state[prefix + "q_proj.weight"].float()).view(n, heads, hd).transpose(0, 1)
    k = F.linear(h, state[prefix + "k_proj.weight"].float()).view(n, kv, hd).transpose(0, 1)
    v = F.linear(h, state[prefix + "v_proj.weight"].float()).view(n, kv, hd).transpose(0, 1)
    inv_freq = 1.0 / (config["rope_theta"] ** (torch.arange(0, hd, 2).float() / hd))
    emb = torch.cat([torch.outer(torch.arange(n).float(), inv_freq)] * 2, -1)
    cos, sin = emb.cos(), emb.sin()

    def rotate(x):
        return x * cos + torch.cat([-x[..., hd // 2:], x[..., : hd // 2]], -1) * sin

    q, k = rotate(q), rotate(k)
    k, v = k.repeat_interleave(heads // kv, 0), v.repeat_interleave(heads // kv, 0)
    scores = q @ k.transpose(1, 2) / math.sqrt(hd) + torch.full((n, n), float("-inf")).triu(1)
    out = (scores.softmax(-1) @ v).transpose(0, 1).reshape(n, -1)
    return F.linear(out, state[prefix + "o_proj.weight"].float())


def official_mlp(state: dict, prefix: str, x: torch.Tensor) -> torch.Tensor:
    gate = F.linear(x, state[prefix + "gate_proj.weight"].float())
    up = F.linear(x, state[prefix + "up_proj.weight"].float())
    return F.linear(F.silu(gate) * up, state[prefix + "down_proj.weight"].float())


def official_eagle(state: dict, config: dict, features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """cnets1.py Model.forward: fc([embed(x_{i+1}); f_i]), then layers.0 (index 0: no input_layernorm)."""
    embeds = F.embedding(tokens, state["embed_tokens.weight"].float())
    x = F.linear(torch.cat([embeds, features], -1), state["fc.weight"].float(), state["fc.bias"].float())
    x = x + official_attention(state, "layers.0.self_attn.", x, config)
    h = rms(x, state["layers.0.post_attention_layernorm.weight"], config["rms_norm_eps"])
    return x + official_mlp(state, "layers.0.mlp.", h)


def official_eagle3(state: dict, config: dict, fused: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
    """cnets.py Model.forward + LlamaDecoderLayeremb: fc(fused); attention over [input_layernorm(embed);
    hidden_norm(x)] with residual x; then the MLP block. Returns target ids of the draft's logits' ranking."""
    eps = config["rms_norm_eps"]
    x = F.linear(fused, state["fc.weight"].float())
    h = torch.cat([rms(embeds, state["midlayer.input_layernorm.weight"], eps),
                   rms(x, state["midlayer.hidden_norm.weight"], eps)], -1)
    x = x + official_attention(state, "midlayer.self_attn.", h, config)
    x = x + official_mlp(state, "midlayer.mlp.", rms(x, state["midlayer.post_attention_layernorm.weight"], eps))
    return F.linear(rms(x, state["norm.weight"], eps), state["lm_head.weight"].float())


# ---------------------------------------------------------------- helpers


def context_of(tokenizer, text: str) -> torch.Tensor:
    return torch.tensor(tokenizer(text)["input_ids"])


def prefilled_draft(target, arm, context: torch.Tensor, gamma: int):
    """The engine's first step: the context but its pending token through the target, its rows to the arm,
    then the arm's draft after the pending token."""
    model = target[0]
    model.reset()
    arm.begin(context[:-1])
    arm.observe_target(0, model.forward(context[:-1]))
    return arm.propose(context, gamma, SamplingConfig(), None)


def assert_lossless(target, arm_cfg: ArmConfig, gamma: int) -> int:
    """Greedy speculative output equals the autoregressive one on 20 prompts; returns the tokens accepted."""
    model, tokenizer = target
    cfg = FlashSpecConfig(target=TargetConfig(max_context=MAX_CONTEXT), bandit=BanditConfig("fixed"), gammas=[gamma])
    arm = build_arm(arm_cfg, model, tokenizer, TargetConfig())
    spec = SpeculativeEngine(cfg, target=model, tokenizer=tokenizer, arms=[arm])
    plain = SpeculativeEngine(FlashSpecConfig(bandit=BanditConfig("none")), target=model, tokenizer=tokenizer)
    accepted = 0
    for prompt in PROMPTS:
        out = spec.generate(prompt, MAX_NEW)
        assert out.token_ids == plain.generate(prompt, MAX_NEW).token_ids, prompt
        accepted += out.arms[arm.name].accepted
    return accepted


# ---------------------------------------------------------------- Medusa-1


@pytest.mark.parametrize(("layers", "safetensors"), [(1, False), (2, True)])
def test_medusa_matches_the_official_heads(target, tmp_path, layers, safetensors):
    model, tokenizer = target
    hf = model.model
    state = write_medusa(tmp_path / "medusa", hf.config, hf.lm_head.weight, layers=layers, safetensors=safetensors)
    arm = build_arm(ArmConfig(kind="medusa", model=str(tmp_path / "medusa")), model, tokenizer, TargetConfig())
    assert len(arm.parents) == len([p for p in OFFICIAL_TREE if len(p) <= 4])  # their default tree, 4 heads deep
    context = context_of(tokenizer, "the cat sat on the mat")
    draft = prefilled_draft(target, arm, context, len(arm.parents))
    with torch.no_grad():
        hidden = hf.model(context[None, :-1]).last_hidden_state[0, -1]
    logits = official_medusa(state, hidden, 4, layers)  # [K, V]
    ranked = logits.topk(10).indices
    expected = [ranked[d - 1, r].item() for d, r in zip(arm.depth.tolist(), arm.rank.tolist(), strict=True)]
    assert draft.tokens.tolist() == expected  # every node: the rank-r token of head d, as theirs ranks them
    assert torch.allclose(arm.heads(hidden), logits, atol=1e-4)


def test_medusa_is_lossless(target, tmp_path):
    hf = target[0].model
    write_medusa(tmp_path / "medusa", hf.config, hf.lm_head.weight)
    assert assert_lossless(target, ArmConfig(kind="medusa", model=str(tmp_path / "medusa")), gamma=16) > 0


# ---------------------------------------------------------------- EAGLE-1/2


@pytest.mark.parametrize("safetensors", [False, True])
def test_eagle_matches_the_official_head(target, tmp_path, safetensors):
    model, tokenizer = target
    hf = model.model
    state = write_eagle(tmp_path / "eagle", hf, safetensors)
    config = json.loads((tmp_path / "eagle" / "config.json").read_text())
    arm = build_arm(ArmConfig(kind="eagle", model=str(tmp_path / "eagle"), params={"top_k": 3, "depth": 3}),
                    model, tokenizer, TargetConfig())
    context = context_of(tokenizer, "speculative decoding with eagle")
    draft = prefilled_draft(target, arm, context, 3 + 9 + 9)
    with torch.no_grad():
        features = hf.model(context[None, :-1]).last_hidden_state[0]
    out = official_eagle(state, config, features, context[1:])
    logp = F.log_softmax(hf.lm_head(out[-1]), -1)
    roots = draft.parents == -1
    assert draft.tokens[roots].tolist() == logp.topk(3).indices.tolist()  # their topK_genrate's first level


@pytest.mark.parametrize(("top_k", "gamma"), [(1, 4), (4, 12)])
def test_eagle_is_lossless(target, tmp_path, top_k, gamma):
    write_eagle(tmp_path / "eagle", target[0].model)
    arm = ArmConfig(kind="eagle", model=str(tmp_path / "eagle"), params={"top_k": top_k, "depth": 4})
    assert assert_lossless(target, arm, gamma) > 0


# ---------------------------------------------------------------- EAGLE-3


def test_eagle3_matches_the_official_head(deep_target, tmp_path):
    model, tokenizer = deep_target
    hf = model.model
    state = write_eagle3(tmp_path / "eagle3", hf)
    config = json.loads((tmp_path / "eagle3" / "config.json").read_text())
    arm = build_arm(ArmConfig(kind="eagle3", model=str(tmp_path / "eagle3"), params={"top_k": 3, "depth": 3}),
                    model, tokenizer, TargetConfig())
    context = context_of(tokenizer, "three features fused into one")
    draft = prefilled_draft(deep_target, arm, context, 3 + 9 + 9)
    with torch.no_grad():  # their decoder keeps the inputs of layers 2, L // 2, L - 3 (hidden_states[i] enters i)
        states = hf.model(context[None, :-1], output_hidden_states=True).hidden_states
    fused = torch.cat([states[2][0], states[4][0], states[5][0]], -1)
    logits = official_eagle3(state, config, fused, hf.get_input_embeddings()(context[1:]))
    top = logits[-1].topk(3).indices
    expected = top + state["d2t"][top]  # their topK_genrate: draft id + d2t[draft id]
    roots = draft.parents == -1
    assert draft.tokens[roots].tolist() == expected.tolist()
    assert all(state["t2d"][draft.tokens])  # every draft token is in the draft vocabulary


@pytest.mark.parametrize(("top_k", "gamma"), [(1, 4), (3, 10)])
def test_eagle3_is_lossless(deep_target, tmp_path, top_k, gamma):
    write_eagle3(tmp_path / "eagle3", deep_target[0].model)
    arm = ArmConfig(kind="eagle3", model=str(tmp_path / "eagle3"), params={"top_k": top_k, "depth": 4})
    assert assert_lossless(deep_target, arm, gamma) > 0


# ---------------------------------------------------------------- refusals


def test_heads_that_do_not_fit_are_refused(target, deep_target, tmp_path):
    model, tokenizer = target
    hf = model.model
    write_medusa(tmp_path / "medusa", hf.config, hf.lm_head.weight, vocab=300)
    with pytest.raises(ValueError, match=r"does not fit this target: 0\.1\.weight is \(300, 128\), the target needs "
                                         r"\(259, 128\)"):
        build_arm(ArmConfig(kind="medusa", model=str(tmp_path / "medusa")), model, tokenizer, TargetConfig())
    deep = deep_target[0].model
    write_eagle(tmp_path / "eagle", deep)  # a head for a 64-wide target on the 128-wide one
    with pytest.raises(ValueError, match=r"fc\.weight is \(64, 128\), the target needs \(128, 256\)"):
        build_arm(ArmConfig(kind="eagle", model=str(tmp_path / "eagle")), model, tokenizer, TargetConfig())
    write_eagle3(tmp_path / "eagle3", deep, t2d_size=300)
    with pytest.raises(ValueError, match=r"t2d is \(300,\), the target needs \(259,\)"):
        build_arm(ArmConfig(kind="eagle3", model=str(tmp_path / "eagle3")), deep_target[0], tokenizer, TargetConfig())
    with pytest.raises(ValueError, match="at least 7"):  # the 4-layer target has no three distinct feature layers
        build_arm(ArmConfig(kind="eagle3", model=str(tmp_path / "eagle3")), model, tokenizer, TargetConfig())
    with pytest.raises(ValueError, match="holds an official eagle3 head, not eagle: use arm kind eagle3"):
        build_arm(ArmConfig(kind="eagle", model=str(tmp_path / "eagle3")), model, tokenizer, TargetConfig())
    with pytest.raises(ValueError, match="no eagle3 head"):
        build_arm(ArmConfig(kind="eagle3", model=str(tmp_path)), model, tokenizer, TargetConfig())
    write_eagle(tmp_path / "scaled", hf, rope_scaling={"type": "dynamic", "factor": 2.0})
    with pytest.raises(ValueError, match="RoPE scaling 'dynamic'"):
        build_arm(ArmConfig(kind="eagle", model=str(tmp_path / "scaled")), model, tokenizer, TargetConfig())


def test_eagle3_chains_sample_from_the_draft_vocabulary(deep_target, tmp_path):
    """A sampled chain states q over the target's ids: a distribution, zero outside the draft vocabulary (the
    verifier's ratio p / q then needs nothing else), each token drawn where q > 0."""
    model, tokenizer = deep_target
    state = write_eagle3(tmp_path / "eagle3", model.model)
    arm = build_arm(ArmConfig(kind="eagle3", model=str(tmp_path / "eagle3"), params={"top_k": 1}), model,
                    tokenizer, TargetConfig())
    context = context_of(tokenizer, "sampled chains")
    model.reset()
    arm.begin(context[:-1])
    arm.observe_target(0, model.forward(context[:-1]))
    draft = arm.propose(context, 4, SamplingConfig(temperature=1.0), generator(0))
    assert torch.allclose(draft.probs.sum(-1), torch.ones(4))
    assert (draft.probs[:, ~state["t2d"]] == 0).all() and (draft.probs.gather(1, draft.tokens[:, None]) > 0).all()
