import importlib.util
import os
from pathlib import Path

# Tests never touch the network: no model hub, no dataset hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The test models are tiny: one thread each avoids OpenMP oversubscription (30x slower on 2 shared cores),
# and subprocesses (run.py sweeps) inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
CUDA = torch.cuda.is_available()

# Without a GPU, Triton kernels (the fused verifiers) run in Triton's interpreter; it must be chosen before
# anything first imports triton.
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


# The GPU image has no lm-eval: its test module cannot even be imported there (the header says so).
NO_LM_EVAL = importlib.util.find_spec("lm_eval") is None
collect_ignore = ["test_quality_lm_eval.py"] if NO_LM_EVAL else []


def pytest_report_header() -> list[str]:
    return ["lm-eval is not installed: tests/test_quality_lm_eval.py not collected"] if NO_LM_EVAL else []


@pytest.fixture(scope="session")
def device() -> torch.device:
    """Where kernel and reference tests put their tensors: the GPU when there is one (Triton kernels then
    compile), else the CPU (they run in the interpreter)."""
    return torch.device("cuda" if CUDA else "cpu")


def child_environment(checkout: Path = ROOT, **extra: str) -> dict[str, str]:
    """This process's environment for a child process (run.py, a script), with `checkout` (this one by default)
    first on PYTHONPATH and the parent's PYTHONPATH kept after it: packages may come from there (the GPU
    image's hydra does)."""
    path = os.pathsep.join(p for p in (str(checkout), os.environ.get("PYTHONPATH", "")) if p)
    return os.environ | {"PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"} | extra
