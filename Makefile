# The commands researchers run; every recipe is one line that can also be typed by hand.
#   make test         the whole suite on the CPU (what CI runs: the README's test command, after its install)
#   make test-gpu     the suite on a CUDA machine (Triton kernels compiled, device-aware tests on the GPU,
#                     tests/test_gpu.py), its output with the commit and device into $(GPU_LOG)
#   make test-slow    the slow statistical tests (deselected by default): chi-squares over many generations
#   make test-chaos   faults: a sweep killed mid-run resumes, dead workers free their GPUs, runaway code
#                     is stopped, torn files never count, bad inputs fail with a clear error
#   make bench-quick  a GPU smoke benchmark of about 3 minutes, fewer points (scripts/bench_gpu.py --quick)
#   make bench        the full GPU benchmark into results/gpu, then the README's results table
#                     (SMOLLM2=<save_pretrained folder> adds the real SmolLM2-135M and the harness section)
#   make paper        paper/figures and paper/tables from the committed studies (results/cpu/), nothing else
PYTHON ?= python
BENCH_OUT ?= results/gpu
SMOLLM2 ?=
QUICK_OUT ?= /tmp/flashspec-bench-quick
GPU_LOG ?= results/gpu/pytest.txt
COMMIT ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
CHAOS = tests/test_harness_sweep.py::test_killed_sweep_resumes_without_redoing_or_losing_runs \
	tests/test_scale_out.py::test_live_workers_never_share_a_gpu_and_a_dead_workers_gpu_is_reused \
	tests/test_quality_humaneval.py::test_runaway_programs_are_stopped \
	tests/test_harness_store.py tests/test_engine_errors.py tests/test_chaos_bandits.py

.PHONY: test test-slow test-gpu test-chaos bench-quick bench lint readme paper

test:
	$(PYTHON) -m pytest -n 2 -q

test-slow:
	$(PYTHON) -m pytest -n 2 -q -m slow

# Tests spread one by one over the workers (--dist load; a module's fixtures are built per worker, and the verifier's per-gamma compiles run in parallel); -rfEs: each failure, error and skip with its reason.
test-gpu:
	$(PYTHON) -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'test-gpu needs a CUDA GPU (make test runs on the CPU)')"
	mkdir -p $(dir $(GPU_LOG))
	$(PYTHON) -c "import torch, triton; print('commit $(COMMIT),', torch.cuda.get_device_name(0), '| torch', torch.__version__, '| triton', triton.__version__)" > $(GPU_LOG)
	$(PYTHON) -m pytest -n 8 --dist load -q -rfEs --durations=15 -p no:cacheprovider >> $(GPU_LOG) 2>&1 || (cat $(GPU_LOG); exit 1)
	cat $(GPU_LOG)

test-chaos:
	$(PYTHON) -m pytest -q $(CHAOS)

bench-quick:
	PYTHONUNBUFFERED=1 $(PYTHON) scripts/bench_gpu.py --out $(QUICK_OUT) --quick $(if $(SMOLLM2),--smollm2 $(SMOLLM2))

bench:
	PYTHONUNBUFFERED=1 $(PYTHON) scripts/bench_gpu.py --out $(BENCH_OUT) $(if $(SMOLLM2),--smollm2 $(SMOLLM2))
	$(PYTHON) scripts/readme_table.py

lint:
	ruff check .

readme:
	$(PYTHON) scripts/readme_table.py

paper:
	$(PYTHON) scripts/make_paper.py
