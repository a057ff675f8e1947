"""The Triton GEMV against F.linear: Triton's interpreter on the CPU, the compiled kernel on CUDA."""

import os

import pytest
import torch

from flashspec.models.gemv import GemvConfig, gemv_reference, gemv_triton

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(
    DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1",
    reason="no CUDA and TRITON_INTERPRET is not 1: the Triton kernel cannot run here",
)


@pytest.mark.parametrize("n,k,config", [
    (96, 256, GemvConfig()),
    (100, 300, GemvConfig(block_n=8, block_k=256)),  # ragged on both sides
    (33, 1024, GemvConfig(block_n=32, block_k=1024, num_warps=8)),
])
def test_matches_f_linear(n, k, config):
    gen = torch.Generator().manual_seed(n + k)
    x, w = torch.randn(1, k, generator=gen), torch.randn(n, k, generator=gen)
    x, w = x.to(DEVICE, torch.bfloat16), w.to(DEVICE, torch.bfloat16)
    got, want = gemv_triton(x, w, config), gemv_reference(x.float(), w.float())
    assert got.shape == (1, n) and got.dtype == torch.bfloat16
    assert ((got.float() - want).norm() / want.norm()).item() < 1e-2


def test_a_wrong_shape_is_one_clear_line():
    with pytest.raises(ValueError, match="one row of 64 values"):
        gemv_triton(torch.zeros(1, 32, device=DEVICE), torch.zeros(8, 64, device=DEVICE))
