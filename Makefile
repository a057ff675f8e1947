# The commands researchers run; every recipe is one line that can also be typed by hand.
#   make test         the whole suite on the CPU (what CI runs: the README's test command, after its install)
#   make test-gpu     the suite on a CUDA machine: Triton kernels compiled, device-aware tests on the GPU
#   make test-chaos   faults: a sweep killed mid-run resumes, dead workers free their GPUs, runaway code
#                     is stopped, torn files never count, bad inputs fail with a clear error
#   make bench-quick  a GPU smoke benchmark, fewer points (scripts/bench_h100.py --quick)
#   make bench        the full GPU benchmark into results/h100, then the README's results table
#   make paper        paper/figures and paper/tables from the committed studies (results/cpu/), nothing else
PYTHON ?= python
BENCH_OUT ?= results/h100
QUICK_OUT ?= /tmp/flashspec-bench-quick
CHAOS = tests/test_harness_sweep.py::test_killed_sweep_resumes_without_redoing_or_losing_runs \
	tests/test_scale_out.py::test_live_workers_never_share_a_gpu_and_a_dead_workers_gpu_is_reused \
	tests/test_quality_humaneval.py::test_runaway_programs_are_stopped \
	tests/test_harness_store.py tests/test_engine_errors.py

.PHONY: test test-gpu test-chaos bench-quick bench lint readme paper

test:
	$(PYTHON) -m pytest -n 2 -q

test-gpu:
	$(PYTHON) -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'test-gpu needs a CUDA GPU (make test runs on the CPU)')"
	$(PYTHON) -m pytest -q

test-chaos:
	$(PYTHON) -m pytest -q $(CHAOS)

bench-quick:
	PYTHONUNBUFFERED=1 $(PYTHON) scripts/bench_h100.py --out $(QUICK_OUT) --quick

bench:
	PYTHONUNBUFFERED=1 $(PYTHON) scripts/bench_h100.py --out $(BENCH_OUT)
	$(PYTHON) scripts/readme_table.py

lint:
	ruff check .

readme:
	$(PYTHON) scripts/readme_table.py

paper:
	$(PYTHON) scripts/make_paper.py
