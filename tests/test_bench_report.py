"""The GPU bench (flashspec/bench) on the CPU: it imports, refuses bad options clearly, and its report turns
small fake CSVs into summary.md lines that mark each of issue 11's targets MET or MISSED."""

import json

import pandas as pd
import pytest
import torch

from flashspec.bench import cli, report
from flashspec.bench.shapes import DRAFT, REAL_SMOLLM2, SMALL, TARGET


def ar_rows(shape: str, tok_s: float, roofline: float, impl: str = "flashspec") -> list[dict]:
    return [dict(device="GPU-X", shape=shape, prompt_tokens=n, impl=impl, tok_s=tok_s + n / 1024,
                 roofline_tok_s=roofline, frac_roofline=tok_s / roofline, ttft_ms=30.0) for n in (64, 1024)]


def profile_rows(shape: str) -> list[dict]:
    totals = {"(wall, profiled)": 5900.0, "(device busy: total)": 5400.0, "(device busy: matmul)": 4900.0,
              "(device busy: attention)": 500.0}
    kernels = {f"gemv_{i}": 500.0 - i for i in range(7)}
    return [dict(shape=shape, profile="graph step k=1", kernel=k, us_per_step=v)
            for k, v in (totals | kernels).items()]


def fake_run(out, efficiency_of_worst: float) -> None:
    ar = (ar_rows(TARGET, 240.0, 280.0) + ar_rows(DRAFT, 600.0, 1700.0) + ar_rows(SMALL, 1200.0, 9000.0)
          + ar_rows(REAL_SMOLLM2, 1100.0, 9000.0) + ar_rows(REAL_SMOLLM2, 250.0, 9000.0, "hf_static_compile"))
    pd.DataFrame(ar).to_csv(out / "ar.csv", index=False)
    pd.DataFrame(profile_rows(DRAFT) + profile_rows(TARGET)).to_csv(out / "profile.csv", index=False)
    latency = [dict(shape=s, k=k, graph_ms=ms * (1 + k / 100), eager_ms=10 * ms)
               for s, ms in ((TARGET, 4.0), (DRAFT, 1.2)) for k in (1, 3, 5)]
    pd.DataFrame(latency).to_csv(out / "latency.csv", index=False)
    spec = [dict(alpha=a, gamma=g, c=0.3, c_arm=0.4, speedup=1.2, ideal=1.3, efficiency=e, realized_alpha=a,
                 timed_triton_compiles=int(e < 0.9), timed_dynamo_graphs=0, timed_graph_captures=0)
            for a, g, e in ((0.8, 2, efficiency_of_worst), (0.8, 4, 1.0))]
    pd.DataFrame(spec).to_csv(out / "speculative.csv", index=False)
    ver = [dict(mode=m, gamma=8, impl=i, us_per_call=us, us_kernel_in_graph=9.0 if i == "triton" else None)
           for m, i, us in (("greedy", "triton", 15.0), ("sampled", "triton", 850.0),
                            ("greedy", "reference", 790.0), ("sampled", "reference", 2100.0))]
    ver.append(dict(mode="sampled", gamma=8, impl="triton[cap=4096]", us_per_call=60.0, us_kernel_in_graph=55.0))
    pd.DataFrame(ver).to_csv(out / "verifier.csv", index=False)
    pd.DataFrame([dict(decode_tok_s=900.0, tok_s=500.0, ttft_ms=28.0)]).to_csv(out / "harness.csv", index=False)
    (out / "env.json").write_text(json.dumps({"device": "GPU-X", "commit": "abc"}))


def target_line(text: str, start: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(f"- **{start}"))


def test_summary_marks_each_target_met_or_missed_with_its_numbers(tmp_path):
    fake_run(tmp_path, efficiency_of_worst=0.64)
    report.report(tmp_path)
    text = (tmp_path / "summary.md").read_text()
    assert text.startswith("# GPU-X: flashspec decoding speed")
    assert "MET**. 240 tok/s = 85.7% of the 280 tok/s roofline" in target_line(text, f"AR {TARGET} >= 85%")
    assert "MISSED**. 600 tok/s = 35.3%" in target_line(text, f"AR {DRAFT} >= 70%")
    assert "MET**. 1200 tok/s" in target_line(text, f"AR {SMALL} shape")
    harness = target_line(text, "harness AR")
    assert "MISSED**" in harness and "900 tok/s after a TTFT of 28 ms" in harness and "(0.82x)" in harness
    assert "harness / engine 0.82 (needs 0.95), harness / HF static 3.60 (needs 4)" in text
    assert "MISSED**. c = " in target_line(text, "draft/target cost ratio")
    assert "MISSED**. greedy 15.0 us" in target_line(text, "verifier <= 20 us")
    assert "MISSED**. min 0.640 at alpha 0.8, gamma 2" in target_line(text, "speculative efficiency")
    assert "MET**. 30.0 ms" in target_line(text, "TTFT reported")
    # A miss is followed by the profile terms of the gap; a met target is not.
    assert "graph step k=1: wall 5900 us = device busy 5400 us (matmul 4900, attention 500) + device idle 500 us" \
        in text.split(f"AR {DRAFT} >= 70%")[1].split("- **")[0]
    assert "us to find" not in text.split(f"AR {TARGET} >= 85%")[1].split("- **")[0]
    assert "sampled: 850.0 us per call = the kernel alone in a graph 9.0 us" in text
    # Tuned launch shapes are reported beside the target, not judged as it.
    assert "sampled under other launch shapes (kernel alone in a graph): cap=4096 55.0 us" in text
    assert "alpha 0.8, gamma 2: 0.640; one-off costs inside its timing: triton_compiles 1" in text
    assert (tmp_path / "ar.png").is_file() and "## speculative cells against a cost-aware ideal" in text
    # The profile's table keeps each step's totals and its five slowest kernels, with the shape they belong to.
    assert f"| {DRAFT} | graph step k=1 | gemv_4 | 496 |" in text and "gemv_5" not in text


def test_a_target_without_its_csv_is_not_measured(tmp_path):
    fake_run(tmp_path, efficiency_of_worst=0.95)
    (tmp_path / "harness.csv").unlink()
    report.report(tmp_path)
    text = (tmp_path / "summary.md").read_text()
    assert "NOT MEASURED**. needs --smollm2 (section a) and section h" in target_line(text, "harness AR")
    assert "MET**. min 0.950" in target_line(text, "speculative efficiency")


def test_bad_options_are_one_clear_line(tmp_path):
    with pytest.raises(ValueError, match=r"--sections has \['x'\]: use a comma-separated subset of a,b,c,d,e,h"):
        cli.main(["--sections", "a,x"])
    with pytest.raises(ValueError, match="--smollm2 .*: no config.json there"):
        cli.main(["--smollm2", str(tmp_path)])
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="run it on a machine with a CUDA GPU"):
            cli.main(["--out", str(tmp_path)])
