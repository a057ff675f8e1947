"""Token-tree verification: the chain case, losslessness (chi-square, 20,000 draws), Triton == reference."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from flashspec.config import SamplingConfig
from flashspec.verify import process_logits, verify_reference
from flashspec.verify.tree import verify_tree_reference
from flashspec.verify.tree_triton import verify_tree_triton
from flashspec.verify.triton_kernel import INTERPRETER, Tuning

V, DRAWS, ROOT = 5, 20_000, 0
# Three siblings under the root, two under the first, then deeper: both sibling tests and paths get used.
SHAPE = torch.tensor([-1, -1, -1, 0, 0, 1, 3])


def random_case(n: int, vocab: int, seed: int, stochastic: bool, hit: float = 0.6, device="cpu"):
    """A random tree (parents precede children) whose tokens often are the target's argmax at their parent;
    all on `device` but the parents, which stay on the CPU (as the engine's)."""
    g = torch.Generator().manual_seed(seed)
    parents = torch.tensor([int(torch.randint(-1, i, (1,), generator=g)) for i in range(n)], dtype=torch.long)
    logits = torch.randn(n + 1, vocab, generator=g) * 2
    tokens = torch.randint(0, vocab, (n,), generator=g)
    tokens = torch.where(torch.rand(n, generator=g) < hit, logits.argmax(-1)[parents + 1], tokens)
    probs = torch.randn(n, vocab, generator=g).softmax(-1).to(device) if stochastic else None
    return logits.to(device), tokens.to(device), parents, probs, torch.rand(n + 1, generator=g).to(device)


# ------------------------------------------------------------------ the chain case
@pytest.mark.parametrize("sampling", [SamplingConfig(), SamplingConfig(1.0), SamplingConfig(0.8, top_k=7)])
@pytest.mark.parametrize("stochastic", [False, True])
def test_chain_shaped_tree_is_the_chain_verifier(sampling, stochastic):
    lengths = []
    for seed in range(40):
        n = 1 + seed % 8
        logits, tokens, _, probs, u = random_case(n, 11, seed, stochastic, hit=0.8)
        chain = torch.arange(n) - 1
        n_tree, path, out = verify_tree_reference(logits, tokens, chain, probs, sampling, u)
        chain_probs = None if probs is None else probs[None]
        n_chain, chain_out = verify_reference(logits[None], tokens[None], chain_probs, sampling, u[None])
        k = int(n_chain[0])
        assert int(n_tree) == k and out[: k + 1].tolist() == chain_out[0, : k + 1].tolist(), seed
        assert path[:k].tolist() == list(range(k)) and (path[k:] == -1).all()
        lengths.append(k)
    assert max(lengths) > 1 and min(lengths) < max(lengths), "the cases all end alike: they prove little"


def test_greedy_takes_the_deepest_matching_path():
    logits = torch.full((6, 4), -1.0)
    # The argmax at the root (row 0) and at each node i (row i + 1).
    logits[0, 2] = logits[1, 3] = logits[2, 1] = logits[3, 0] = logits[4, 0] = logits[5, 2] = 1.0
    # Nodes 0 and 1 both match the root (a duplicate); only under node 1 does the path go on.
    tokens, parents = torch.tensor([2, 2, 3, 1, 0]), torch.tensor([-1, -1, 0, 1, 3])
    n, path, out = verify_tree_reference(logits, tokens, parents, None, SamplingConfig(), torch.zeros(6))
    assert int(n) == 3 and path.tolist() == [1, 3, 4, -1, -1] and out.tolist() == [2, 1, 0, 2, -1, -1]


# ------------------------------------------------------------------ losslessness
def tables() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    target = torch.randn(V, V, generator=g) * 1.5
    return target, target + torch.randn(V, V, generator=g)  # a related but different draft


def draft_trees(q: torch.Tensor, siblings: str, g: torch.Generator) -> torch.Tensor:
    """Tokens [2, DRAWS, V, N] of SHAPE trees drafted from the bigram draft q: one per step (a draw takes at
    most two steps), draw and root token, so no step reuses a tree whose fate an earlier step revealed.

    iid: each node drawn from q(. | parent) independently (lossless); top_k: the distinct most likely
    tokens, stated deterministic (lossless); without_replacement: distinct draws stated as q (broken)."""
    roots = torch.arange(V).repeat(2 * DRAWS)
    tokens = torch.empty(len(roots), len(SHAPE), dtype=torch.long)
    for i, parent in enumerate(SHAPE.tolist()):
        dist = q[roots if parent < 0 else tokens[:, parent]].clone()
        earlier = [j for j in range(i) if SHAPE[j] == parent]
        if siblings == "top_k":
            tokens[:, i] = dist.argsort(-1, descending=True)[:, len(earlier)]
            continue
        if siblings == "without_replacement":
            dist.scatter_(1, tokens[:, earlier], 0.0)
        tokens[:, i] = torch.multinomial(dist, 1, generator=g)[:, 0]
    return tokens.view(2, DRAWS, V, len(SHAPE))


def first_two_counts(sampling: SamplingConfig, siblings: str) -> tuple[np.ndarray, np.ndarray]:
    target, draft = tables()
    q = process_logits(draft, SamplingConfig(1.0))
    g = torch.Generator().manual_seed(1)
    trees = draft_trees(q, siblings, g)
    uniforms = torch.rand(2, DRAWS, len(SHAPE) + 1, generator=g)
    counts = np.zeros(V * V)
    for d in range(DRAWS):
        emitted = [ROOT]
        for step in range(2):  # a step that accepts nothing emits one token: draft again under it
            tokens = trees[step, d, emitted[-1]]
            block = torch.cat([torch.tensor(emitted[-1:]), tokens])  # the root, then the nodes
            logits = target[block]
            probs = None if siblings == "top_k" else q[block[SHAPE + 1]]  # q at each node's parent
            n, _, out = verify_tree_reference(logits, tokens, SHAPE, probs, sampling, uniforms[step, d])
            emitted += out[: int(n) + 1].tolist()
            if len(emitted) >= 3:
                break
        counts[emitted[1] * V + emitted[2]] += 1
    p = process_logits(target, sampling).double()
    return counts, (p[ROOT][:, None] * p).flatten().numpy()


def chi_square_p(counts: np.ndarray, expected: np.ndarray) -> float:
    assert counts[expected == 0].sum() == 0, "a token pair the target never produces was emitted"
    keep = expected * DRAWS >= 5  # bins with too little mass are pooled into one
    f_obs = np.append(counts[keep], counts[~keep & (expected > 0)].sum())
    f_exp = np.append(expected[keep], expected[~keep].sum()) * DRAWS
    if f_exp[-1] == 0:
        f_obs, f_exp = f_obs[:-1], f_exp[:-1]
    return chisquare(f_obs, f_exp * f_obs.sum() / f_exp.sum()).pvalue


@pytest.mark.parametrize(
    ("siblings", "sampling"), [("iid", SamplingConfig(1.0)), ("top_k", SamplingConfig(0.7, top_k=4))]
)
def test_tree_sampling_follows_the_target(siblings, sampling):
    assert chi_square_p(*first_two_counts(sampling, siblings)) > 1e-3


def test_chi_square_catches_siblings_drawn_without_replacement():
    """The test has power: distinct siblings stated as drawn from q bias the output."""
    assert chi_square_p(*first_two_counts(SamplingConfig(1.0), "without_replacement")) < 1e-6


# ------------------------------------------------------------------ the Triton kernel
SMALL_BLOCKS = replace(INTERPRETER, block_v=64, chunk=128, cap=64)  # several blocks and chunks per row
DEVICE_DEFAULT: Tuning | None = None  # the launch shape the kernel picks for the device: the GPU's or the interpreter's


@pytest.mark.parametrize(("n", "vocab", "sampling", "stochastic", "tuning"), [
    (64, 97, SamplingConfig(), False, SMALL_BLOCKS),
    (64, 300, SamplingConfig(1.0), True, DEVICE_DEFAULT),
    (48, 1000, SamplingConfig(1.0), False, DEVICE_DEFAULT),
    (12, 257, SamplingConfig(0.7, top_k=20, top_p=0.8), True, SMALL_BLOCKS),
    (20, 33, SamplingConfig(0.5, top_p=0.9), False, SMALL_BLOCKS),
    (1, 5, SamplingConfig(1.0), True, DEVICE_DEFAULT),
])
def test_triton_equals_reference(n, vocab, sampling, stochastic, tuning, device):
    depths = []
    for seed in range(2):
        case = random_case(n, vocab, seed, stochastic, device=device)
        expected = verify_tree_reference(*case[:4], sampling, case[4])
        got = verify_tree_triton(*case[:4], sampling, case[4], tuning)
        assert [t.tolist() for t in got] == [t.tolist() for t in expected], seed
        depths.append(int(expected[0]))
    assert max(depths) > 0 or n == 1


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("verify", [verify_tree_reference, verify_tree_triton])
def test_bad_trees_are_named(verify, device):
    logits, tokens, _, _, u = random_case(3, 8, 0, False, device=device)
    with pytest.raises(ValueError, match=r"parents\[1\] = 1"):
        verify(logits, tokens, torch.tensor([-1, 1, 0]), None, SamplingConfig(), u)
    with pytest.raises(ValueError, match="uniforms has shape"):
        verify(logits, tokens, torch.tensor([-1, 0, 0]), None, SamplingConfig(), u[:-1])
