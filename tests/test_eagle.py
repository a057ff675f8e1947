"""The EAGLE arm: its cached, tree-masked drafting equals the head run path by path; checkpoints load through
build_arm with clear errors; decoding through it is lossless (greedy on 20 prompts, sampling chi-square)."""

import numpy as np
import pytest
import torch
from scipy.stats import chisquare
from test_engine_lossless import PROMPTS
from torch import nn
from transformers import LlamaConfig

from flashspec import (
    ArmConfig,
    BanditConfig,
    FlashSpecConfig,
    SamplingConfig,
    SpeculativeEngine,
    TargetConfig,
)
from flashspec.arms import build_arm
from flashspec.arms.eagle import EagleArm, _best_subtree
from flashspec.drafters.eagle import EagleHead, head_config, save_eagle
from flashspec.models import CausalLM, Scores, load_model

MAX_CONTEXT = 128


@pytest.fixture(scope="module")
def target():
    return load_model("tiny", TargetConfig(max_context=MAX_CONTEXT))


def random_head(hf, seed: int = 0) -> EagleHead:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return EagleHead(head_config(hf.config)).eval()


def make_arm(target, top_k: int, depth: int, seed: int = 0) -> EagleArm:
    hf = target[0].model
    head = random_head(hf, seed)
    return EagleArm(head, hf.get_input_embeddings(), hf.get_output_embeddings(), MAX_CONTEXT, top_k, depth)


def prefill(target, arm: EagleArm, context: torch.Tensor) -> None:
    """What the engine does before the first step: the prompt through the target, its rows to the arm."""
    model = target[0]
    model.reset()
    arm.begin(context[:-1])
    arm.observe_target(0, model.forward(context[:-1]))


@torch.inference_mode()
def path_children(arm: EagleArm, context: torch.Tensor, path: list[int]) -> tuple[list[int], list[float]]:
    """The head's top-k children (and log-probs) after `path`, computed without a cache or a tree mask: the
    committed entries from the target's features, then each path token fed its predecessor's output."""
    t = len(context) - 1
    features, tokens = arm.features.values[:t], context[1 : t + 1]
    for step in range(len(path) + 1):
        n = len(tokens)
        mask = torch.ones(n, n, dtype=torch.bool).tril()
        out = arm.head(features[None], arm.embed(tokens)[None], torch.arange(n)[None], mask)[0][0]
        if step < len(path):
            tokens = torch.cat([tokens, torch.tensor(path[step : step + 1])])
            features = torch.cat([features, out[-1:]])
    logp, child = arm.lm_head(out[-1]).float().log_softmax(-1).topk(arm.top_k)
    return child.tolist(), logp.tolist()


def test_tree_matches_the_head_run_path_by_path(target):
    arm = make_arm(target, top_k=3, depth=4)
    context = torch.tensor([256, *b"speculative decoding "])
    prefill(target, arm, context)
    gamma = 3 + 3 * 3 * 3  # every node of the tree: top_k at depth 1, top_k * top_k below each expanded level
    draft = arm.propose(context, gamma, None, None)
    assert len(draft) == gamma and draft.probs is None
    tokens, paths = draft.tokens.tolist(), _paths(draft)
    children: dict[int, list[int]] = {}
    for i, p in enumerate(draft.parents.tolist()):
        children.setdefault(p, []).append(i)
    expanded = [node for node in children if node >= 0]
    assert len(expanded) == 3 + 3 * 2  # top_k nodes grown at depths 1, 2 and 3
    for node in [-1, *expanded]:
        expected, _ = path_children(arm, context, paths[node])
        assert [tokens[c] for c in children[node]] == expected


def test_kept_nodes_are_the_best_and_form_a_tree(target):
    arm = make_arm(target, top_k=4, depth=5, seed=1)
    context = torch.tensor([256, *b"the head keeps its best nodes"])
    prefill(target, arm, context)
    full = arm.propose(context, 4 + 4 * 4 * 4, None, None)
    paths, scores = _paths(full), {}
    for i, p in enumerate(full.parents.tolist()):  # cumulative log-probability of each node's path
        siblings, logp = path_children(arm, context, paths[p])
        scores[i] = scores.get(p, 0.0) + logp[siblings.index(paths[i][-1])]
    kept = arm.propose(context, 10, None, None)
    best = sorted(scores, key=lambda i: -scores[i])[:10]
    assert sorted(_paths(kept)[i] for i in range(10)) == sorted(paths[i] for i in best)


def _paths(draft) -> dict[int, list[int]]:
    """Each node's tokens from the root down; checks that parents come first."""
    paths: dict[int, list[int]] = {-1: []}
    for i, (tok, p) in enumerate(zip(draft.tokens.tolist(), draft.parents.tolist(), strict=True)):
        assert p < i
        paths[i] = paths[p] + [tok]
    return paths


def test_best_subtree_breaks_ties_towards_ancestors():
    # Node 2's score equals its parent's (a log-probability of 0): the parent must come first.
    tokens = torch.tensor([5, 6, 7, 8])
    parents = torch.tensor([-1, -1, 0, 2])
    scores = torch.tensor([-1.0, -3.0, -1.0, -2.0])
    draft = _best_subtree(tokens, parents, scores, 2)
    assert draft.tokens.tolist() == [5, 7] and draft.parents.tolist() == [-1, 0]


def test_checkpoint_round_trip_through_build_arm(target, tmp_path):
    model, tokenizer = target
    head = random_head(model.model, seed=3)
    save_eagle(tmp_path / "eagle", head, model.model.config, {"preset": "test"})
    arm = build_arm(ArmConfig(kind="eagle", model=str(tmp_path / "eagle"), params={"top_k": 2, "depth": 3}),
                    model, tokenizer, TargetConfig())
    for a, b in zip(arm.head.state_dict().values(), head.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert (arm.top_k, arm.depth) == (2, 3)


def test_config_errors(target, tmp_path):
    model, tokenizer = target
    with pytest.raises(ValueError, match="needs `model`"):
        build_arm(ArmConfig(kind="eagle"), model, tokenizer, TargetConfig())
    with pytest.raises(ValueError, match="no eagle drafter"):
        build_arm(ArmConfig(kind="eagle", model=str(tmp_path)), model, tokenizer, TargetConfig())
    with pytest.raises(ValueError, match="unknown eagle params"):
        build_arm(ArmConfig(kind="eagle", model="x", params={"width": 3}), model, tokenizer, TargetConfig())
    hf_target, _ = load_model("tiny", TargetConfig(backend="hf", max_context=MAX_CONTEXT))
    with pytest.raises(ValueError, match="cannot verify"):
        build_arm(ArmConfig(kind="eagle", model="x", params={"top_k": 2}), hf_target, tokenizer,
                  TargetConfig(backend="hf"))
    other = load_model("tiny", TargetConfig(max_context=MAX_CONTEXT))[0].model
    other.config.num_hidden_layers += 1  # a different target
    save_eagle(tmp_path / "other", random_head(model.model), other.config, {})
    other.config.num_hidden_layers -= 1
    with pytest.raises(ValueError, match="trained for a target"):
        build_arm(ArmConfig(kind="eagle", model=str(tmp_path / "other")), model, tokenizer, TargetConfig())


# ---------------------------------------------------------------- through the engine


def engine_with(target, tokenizer, arm, gamma: int) -> SpeculativeEngine:
    cfg = FlashSpecConfig(target=TargetConfig(max_context=target.max_context), bandit=BanditConfig("fixed"),
                          gammas=[gamma])
    return SpeculativeEngine(cfg, target=target, tokenizer=tokenizer, arms=[arm])


@pytest.mark.parametrize(("top_k", "depth", "gamma"), [(1, 4, 4), (3, 4, 8)])
def test_greedy_is_token_identical_on_the_tiny_target(target, top_k, depth, gamma):
    model, tokenizer = target
    spec = engine_with(model, tokenizer, make_arm(target, top_k, depth), gamma)
    plain = SpeculativeEngine(FlashSpecConfig(bandit=BanditConfig("none")), target=model, tokenizer=tokenizer)
    assert len(PROMPTS) >= 20
    for prompt in PROMPTS:
        assert spec.generate(prompt, 20).token_ids == plain.generate(prompt, 20).token_ids, prompt


class BigramFeatures(CausalLM):
    """A target whose hidden state at token x is E[x] and whose logits are lm_head(E[x]): the next token
    depends on the last one only. An EAGLE head that returns embed(x_{i+1}) then predicts every feature
    exactly, so its drafts are the target's own top tokens and trees get deep acceptance."""

    supports_tree = True

    def __init__(self, embed: nn.Embedding, lm_head: nn.Linear) -> None:
        self.embed, self.lm_head = embed, lm_head
        self.vocab_size, self.max_context, self.length = embed.num_embeddings, 64, 0

    def reset(self) -> None:
        self.length = 0

    @torch.no_grad()
    def forward(self, tokens, parents=None) -> Scores:
        self.check_room(len(tokens))
        self.length += len(tokens)
        hidden = self.embed(tokens)
        return Scores(self.lm_head(hidden).float(), hidden)

    def crop(self, length: int) -> None:
        self.length = min(length, self.length)

    def keep_path(self, start: int, nodes) -> None:
        self.length = start + len(nodes)


class NoTokenizer:
    eos_token_id = None

    def decode(self, ids, skip_special_tokens=False) -> str:
        return ""


def bigram_setup(top_k: int, depth: int) -> tuple[BigramFeatures, EagleArm]:
    vocab, width = 6, 8
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        embed, lm_head = nn.Embedding(vocab, width), nn.Linear(width, vocab, bias=False)
        lm_head.weight.data *= 3  # peaked enough that some tokens are rare
        config = LlamaConfig(vocab_size=vocab, hidden_size=width, intermediate_size=2 * width, head_dim=4,
                             num_attention_heads=2, num_key_value_heads=2, num_hidden_layers=1)
        head = EagleHead(config)
    with torch.no_grad():  # fc passes embed(x_{i+1}) through; the decoder layer adds nothing
        head.fc.weight.copy_(torch.cat([torch.eye(width), torch.zeros(width, width)], 1))
        head.fc.bias.zero_()
        head.layer.self_attn.o_proj.weight.zero_()
        head.layer.mlp.down_proj.weight.zero_()
    target = BigramFeatures(embed, lm_head)
    return target, EagleArm(head, embed, lm_head, target.max_context, top_k, depth)


@pytest.mark.parametrize(("top_k", "depth", "gamma"), [(1, 3, 3), (2, 3, 5)])
def test_exact_head_drafts_get_accepted(top_k, depth, gamma):
    target, arm = bigram_setup(top_k, depth)
    out = engine_with(target, NoTokenizer(), arm, gamma).generate([0, 3], 16)
    plain = SpeculativeEngine(FlashSpecConfig(bandit=BanditConfig("none")), target=target,
                              tokenizer=NoTokenizer())
    assert out.token_ids == plain.generate([0, 3], 16).token_ids
    assert out.tau > 2  # drafts really were accepted, several per step


def test_sampling_through_the_tree_follows_the_target():
    """(x2, x3), the first two tokens verified through top-2 trees, against their exact distribution."""
    target, arm = bigram_setup(top_k=2, depth=3)
    spec = engine_with(target, NoTokenizer(), arm, gamma=5)
    draws, vocab = 2000, target.vocab_size
    p = torch.softmax(target.lm_head(target.embed.weight).double(), -1).detach()  # p[a, b] = P(b | a)
    expected = ((p[3] @ p)[:, None] * p).flatten().numpy()
    counts, accepted = np.zeros(vocab * vocab), 0
    for seed in range(draws):
        out = spec.generate([0, 3], 6, SamplingConfig(temperature=1.0, seed=seed))
        counts[out.token_ids[1] * vocab + out.token_ids[2]] += 1
        accepted += out.arms["eagle"].accepted
    assert accepted > draws  # about two accepted tokens per generation: the tree's siblings are exercised
    keep = expected * draws >= 5
    f_obs = np.append(counts[keep], counts[~keep].sum())
    f_exp = np.append(expected[keep], expected[~keep].sum()) * draws
    assert chisquare(f_obs, f_exp * f_obs.sum() / f_exp.sum()).pvalue > 1e-3
