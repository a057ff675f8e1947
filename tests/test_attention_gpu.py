"""The split-KV decode attention compiled for the GPU: inside captured CUDA graphs with the used length
rewritten between replays, inside NativeLlama's compiled and captured step, and timed against the
reference for the Llama-3-8B shape. CUDA only."""

import pytest
import torch
import transformers as tf

from flashspec.models.attention import decode_attention_reference, decode_attention_triton, time_decode_attention
from flashspec.models.native import NativeLlama

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the kernel compiled for a GPU")


def rel_err(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("n", [1, 9, 33])
def test_one_captured_graph_serves_every_length(n):
    """8B shape in bfloat16: one graph, lengths written into its positions tensor between replays; slots
    past each length hold NaN, so a read of any of them shows."""
    gen = torch.Generator(device="cuda").manual_seed(n)
    q = torch.randn(n, 32, 128, device="cuda", dtype=torch.bfloat16, generator=gen)
    k, v = (torch.randn(8, 2048, 128, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in "kv")
    clean_k, clean_v = k.clone(), v.clone()
    positions = torch.arange(n, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        decode_attention_triton(q, k, v, positions)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = decode_attention_triton(q, k, v, positions)
    for used in (n, 64, 65, 700, 1024, 2047, 2048):
        positions.copy_(torch.arange(used - n, used))
        k.copy_(clean_k)
        v.copy_(clean_v)
        k[:, used:], v[:, used:] = float("nan"), float("nan")
        graph.replay()
        want = decode_attention_reference(q.float(), clean_k.float(), clean_v.float(), positions)
        assert torch.isfinite(out).all(), used
        assert rel_err(out, want) < 1e-2, used


def test_compiled_captured_step_matches_eager_forward():
    """NativeLlama on CUDA (compiled layer, captured graphs, Triton decode attention) against its eager
    forward (SDPA over the filled cache), float32, through rollbacks, for several block lengths."""
    torch.manual_seed(0)
    cfg = tf.LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=8, num_key_value_heads=2, initializer_range=0.05)
    model = tf.LlamaForCausalLM(cfg).eval().cuda()
    eager = NativeLlama(model, 512)
    static = NativeLlama(model, 512, graphs=True)
    assert static.capture and static.compiled and static.decode_attention is decode_attention_triton
    prompt = torch.randint(0, 512, (300,), device="cuda")
    eager.forward(prompt)
    static.forward(prompt)
    for i, n in enumerate((1, 3, 9, 1, 17, 5, 32)):
        if i == 3:
            eager.crop(305)
            static.crop(305)
        block = torch.randint(0, 512, (n,), device="cuda")
        a, b = eager.forward(block), static.forward(block)
        assert torch.allclose(a.logits, b.logits, atol=1e-3, rtol=1e-3), n


def test_kernel_beats_the_reference_on_a_part_filled_cache():
    """The timing helper the GPU benchmark calls; reading 256 of 2048 slots must be faster than reading
    all of them behind a mask."""
    for n in (1, 9):
        triton_us = time_decode_attention(n, [256, 2048])
        reference_us = time_decode_attention(n, [256], impl="reference")
        print(f"n={n}: triton {triton_us} us, reference {reference_us} us")
        assert triton_us[256] < reference_us[256]
