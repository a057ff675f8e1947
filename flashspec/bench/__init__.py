"""Decoding speed on one GPU (issues 5 and 11), into CSVs, figures and summary.md (scripts/bench_gpu.py runs it).

    PYTHONUNBUFFERED=1 python scripts/bench_gpu.py --out results/gpu --smollm2 DIR   # everything, < 10 minutes
    PYTHONUNBUFFERED=1 python scripts/bench_gpu.py --out /tmp/gpu --quick            # a smoke test, ~3 minutes
    python scripts/bench_gpu.py --report-only results/gpu                            # redo figures + summary

Sections (--sections, default all), one module each:
  a  ar.py: AR decode tok/s and TTFT, batch 1, after a 64- and a 1024-token prompt, on random-weight
     Llama-3-8B, Llama-3.2-1B and SmolLM2-135M shapes (shapes.py) and the real SmolLM2 (--smollm2): flashspec
     against the memory roofline and Hugging Face `generate` (eager; static cache + compile); checks (our
     logits against Hugging Face's, graph against eager) and host-device syncs per step
  b  latency.py: target forward latency for k = 1..17 new tokens (captured graph vs eager), kernel profiles
  c  speculative.py: the controlled-acceptance arm (1B-shape draft) for alpha x gamma: measured speedup next
     to the ideal, c = draft step / target step, one-off compiles counted per cell
  d  verifier.py: the verifier per call (fused Triton kernel, PyTorch reference, torch.compile of it)
  e  family.py: the project's trained family (results/models) on MT-Bench / HumanEval / Alpaca
  h  harness.py: run.py on a real model (--harness-model, default --smollm2), decode tok/s and TTFT apart
measure.py holds the timers; report.py writes summary.md (issue 11's targets MET or MISSED) and the figures.
"""
