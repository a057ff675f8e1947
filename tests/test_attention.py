"""The split-KV decode attention kernel against its reference: Triton's interpreter on the CPU, the compiled
kernel where CUDA is available. Cache slots past the used length hold NaN for the kernel (the reference
gets zeros there), so any read of them shows."""

import os

import pytest
import torch

from flashspec.models.attention import (
    decode_attention_reference,
    decode_attention_triton,
    tiling,
    tree_paths,
    visible_slots,
)
from flashspec.models.base import tree_depths, tree_mask

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(
    DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1",
    reason="no CUDA and TRITON_INTERPRET is not 1: the Triton kernel cannot run here",
)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def inputs(n, heads, kv_heads, dim, span, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(n, heads, dim, generator=gen)
    k, v = torch.randn(2, kv_heads, span, dim, generator=gen)
    return [t.to(DEVICE, DTYPES[dtype]) for t in (q, k, v)]


def poisoned(cache, used):
    out = cache.clone()
    out[:, used:] = float("nan")
    return out


def rel_err(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


# n, H, Hkv, head_dim, cache slots, used length, dtype: GQA 1..8 query heads per KV head (3: SmolLM2), MHA,
# head sizes 16..256 and one that is no power of two, blocks of 1..33 rows, lengths from n to the last slot
CASES = [
    (1, 4, 2, 64, 256, 101, "float32"),
    (1, 32, 8, 128, 512, 512, "bfloat16"),
    (9, 8, 2, 128, 300, 209, "float32"),
    (9, 9, 3, 64, 200, 150, "bfloat16"),
    (33, 4, 4, 32, 128, 60, "float32"),
    (17, 8, 1, 256, 160, 140, "float16"),
    (3, 6, 3, 80, 200, 8, "bfloat16"),
    (2, 4, 2, 16, 64, 2, "float32"),
]


@pytest.mark.parametrize("n,heads,kv_heads,dim,span,used,dtype", CASES)
def test_kernel_matches_reference_and_never_reads_past_the_used_length(n, heads, kv_heads, dim, span, used, dtype):
    q, k, v = inputs(n, heads, kv_heads, dim, span, dtype, seed=n * span + used)
    positions = torch.arange(used - n, used, device=DEVICE)
    out = decode_attention_triton(q, poisoned(k, used), poisoned(v, used), positions)
    clean = (k[:, :used], v[:, :used])  # the reference never sees the poisoned slots
    want = decode_attention_reference(q.float(), clean[0].float(), clean[1].float(), positions)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert torch.isfinite(out).all()
    assert rel_err(out, want) < (1e-5 if dtype == "float32" else 1e-2)


def test_each_row_sees_only_the_slots_up_to_its_position():
    """Causal within the block: a change to the last row's own key reaches the last row's output only."""
    q, k, v = inputs(5, 4, 2, 32, 64, "float32", seed=3)
    positions = torch.arange(20, 25, device=DEVICE)
    before = decode_attention_triton(q, k, v, positions)
    k[:, 24] += 1.0
    after = decode_attention_triton(q, k, v, positions)
    assert torch.equal(before[:4], after[:4])
    assert not torch.allclose(before[4], after[4])


TREE = torch.tensor([-1, -1, 0, 0, 1, 2, 5])  # two roots, a fork under the first, a chain under one branch


def test_a_tree_sees_the_cache_before_it_and_its_ancestors():
    """A tree of 7 nodes in slots 40..46: node i sees slots 0..39 and its ancestors' slots, nothing else."""
    positions = torch.arange(40, 47)
    mask = visible_slots(positions, tree_paths(TREE), 64)
    want = torch.zeros(7, 64, dtype=torch.bool)
    want[:, :40] = True
    want[:, 40:47] = tree_mask(TREE)
    assert torch.equal(mask, want)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_tree_rows_match_the_reference(dtype):
    """The kernel behind a tree's paths against SDPA behind the same mask, past poisoned slots; and a chain's
    mask would give other rows (so the paths are read)."""
    q, k, v = inputs(7, 9, 3, 64, 200, dtype, seed=11)
    positions = torch.arange(120, 127, device=DEVICE)
    paths = tree_paths(TREE).to(DEVICE)
    out = decode_attention_triton(q, poisoned(k, 127), poisoned(v, 127), positions, paths)
    want = decode_attention_reference(q.float(), k.float(), v.float(), positions, paths)
    assert rel_err(out, want) < (1e-5 if dtype == "float32" else 1e-2)
    chain = decode_attention_reference(q.float(), k.float(), v.float(), positions)
    assert torch.allclose(out[0].float(), chain[0], atol=1e-2)  # node 0 sees the same slots either way
    assert all(rel_err(out[i], chain[i]) > 1e-3 for i in range(1, 7)), [rel_err(out[i], chain[i]) for i in range(7)]


def test_tree_paths_list_each_nodes_ancestors_root_first():
    assert tree_paths(TREE).tolist() == [[0, -1, -1, -1, -1, -1, -1], [1, -1, -1, -1, -1, -1, -1],
                                         [0, 2, -1, -1, -1, -1, -1], [0, 3, -1, -1, -1, -1, -1],
                                         [1, 4, -1, -1, -1, -1, -1], [0, 2, 5, -1, -1, -1, -1],
                                         [0, 2, 5, 6, -1, -1, -1]]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("start", [40, 62])  # a path inside one 64-slot tile and split, and one across two
def test_a_tree_node_attends_as_the_one_token_step_at_its_position(dtype, start):
    """Bit for bit: node i's row equals the one-token step at its position over a cache holding its ancestors
    in the slots right after the prefix (what decoding its path one token at a time leaves there), so a kept path
    continues exactly as autoregressive decoding would have. Reading the nodes where the block put them (with a
    gap for every other branch) sums in another order and fails this."""
    n = len(TREE)
    q, k, v = inputs(n, 9, 3, 64, 256, dtype, seed=start)
    positions = torch.arange(start, start + n, device=DEVICE)
    tree = decode_attention_triton(q, k, v, positions, tree_paths(TREE).to(DEVICE))
    for i, path in enumerate(tree_paths(TREE).tolist()):
        path = [j for j in path if j >= 0]
        laid = [c.clone() for c in (k, v)]
        for depth, j in enumerate(path):
            for cache, source in zip(laid, (k, v), strict=True):
                cache[:, start + depth] = source[:, start + j]
        at = torch.tensor([start + len(path) - 1], device=DEVICE)
        assert torch.equal(tree[i], decode_attention_triton(q[i : i + 1], *laid, at)[0]), (i, path)
    assert int(tree_depths(TREE).max()) == 4  # the deepest path: 4 nodes


def test_one_set_of_tensors_serves_every_length():
    """The length comes from the positions tensor alone: rewrite it in place, call again (as a graph replay
    does), and each result matches the reference at that length."""
    q, k, v = inputs(3, 8, 2, 64, 640, "float32", seed=5)
    positions = torch.zeros(3, dtype=torch.long, device=DEVICE)
    for used in (3, 64, 65, 300, 640):
        positions.copy_(torch.arange(used - 3, used))
        want = decode_attention_reference(q, k, v, positions)
        assert rel_err(decode_attention_triton(q, k, v, positions), want) < 1e-5, used


def test_tiling_takes_the_devices_multiprocessors():
    """The split count follows the `sms` given (so tests/test_verify_compile.py compiles the H200's launches on
    any machine): on the H200's 132, the counts its bench measured; on the interpreter's few, still several
    splits for the combination to join."""
    assert tiling(1 * 4, 128, 8, 2048, 132)[-1] == 32  # Llama-3-8B, one row
    assert tiling(1 * 4, 128, 8, 512, 132)[-1] == 8  # capped by the cache's key blocks
    assert tiling(1 * 3, 64, 3, 2048, 132)[-1] == 32  # SmolLM2-135M, one row
    assert tiling(1 * 4, 128, 8, 2048, 4)[-1] == 1
    assert tiling(9 * 3, 64, 3, 512, 4)[-1] == 2


def test_several_splits_combine_to_the_reference():
    """The combine kernel joins the splits' partial softmaxes (two splits here, on any device)."""
    q, k, v = inputs(9, 9, 3, 64, 512, "bfloat16", seed=7)
    positions = torch.arange(400, 409, device=DEVICE)
    sms = torch.cuda.get_device_properties(0).multi_processor_count if DEVICE == "cuda" else 4
    assert tiling(9 * 3, 64, 3, 512, sms)[-1] > 1  # the combining path, not the one-split one
    want = decode_attention_reference(q.float(), k.float(), v.float(), positions)
    assert rel_err(decode_attention_triton(q, k, v, positions), want) < 1e-2


def test_kernel_is_one_opaque_op_under_compile():
    """Dynamo and AOT autograd see the custom op (its fake implementation gives shapes, dynamic n included)
    and do not trace into the launches."""
    compiled = torch.compile(decode_attention_triton, backend="aot_eager", dynamic=True, fullgraph=True)
    for n in (2, 5):
        q, k, v = inputs(n, 4, 2, 32, 96, "float32", seed=n)
        positions = torch.arange(40, 40 + n, device=DEVICE)
        assert rel_err(compiled(q, k, v, positions), decode_attention_reference(q, k, v, positions)) < 1e-5


@pytest.mark.parametrize("shapes,match", [
    (((1, 6, 32), (4, 64, 32), (1,)), "multiple of Hkv"),
    (((1, 4, 32), (2, 64, 16), (1,)), "head sizes must match"),
    (((2, 4, 32), (2, 64, 32), (1,)), "one per query row"),
    (((2, 4, 32), (2, 64, 32), (2,), (3, 3)), "paths must be"),
    (((2, 128, 16), (1, 64, 16), (2,), (2, 2)), "fewer than its 128 query heads"),
])
def test_bad_shapes_are_refused_with_one_clear_line(shapes, match):
    q, cache, positions, *ancestors = (torch.zeros(s, device=DEVICE) for s in shapes)
    with pytest.raises(ValueError, match=match):
        decode_attention_triton(q, cache, cache, positions.long(), *(a.int() for a in ancestors))
