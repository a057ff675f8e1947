import os

# Tests never touch the network: no model hub, no dataset hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The test models are tiny: one thread each avoids OpenMP oversubscription (30x slower on 2 shared cores),
# and subprocesses (run.py sweeps) inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)

# Without a GPU, Triton kernels (the fused verifiers) run in Triton's interpreter; it must be chosen before
# anything first imports triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
