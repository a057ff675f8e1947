"""summary.md and the figures, from the CSVs alone (`--report-only DIR` redoes them without a GPU).

summary.md opens with issue 11's targets, each MET, MISSED or NOT MEASURED with its numbers; under each
missed one, the profile terms that account for the gap (wall time = device busy time by kernel kind + device
idle time, against the weight-read floor).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from flashspec.bench.shapes import CONTEXT, DRAFT, LLAMA3_IDS, REAL_SMOLLM2, SMALL, TARGET

AR_FRACTIONS = {TARGET: 0.85, DRAFT: 0.70}  # of the roofline
SMALL_TOK_S, SMALL_AIM = 1000, 1500
HARNESS_OF_ENGINE, HARNESS_OF_HF = 0.95, 4.0  # "gets what the engine gets" (within timing noise); >= 4x HF
C_MAX, VERIFIER_US, EFFICIENCY = 0.12, 20.0, 0.90
VERIFIER_GAMMA = 8


def report(out: Path) -> None:
    env = json.loads((out / "env.json").read_text()) if (out / "env.json").exists() else {}
    figures(out, env.get("device", "?"))
    frames = {p.stem: pd.read_csv(p) for p in sorted(out.glob("*.csv"))}
    lines = [f"# {env.get('device', '?')}: flashspec decoding speed", "",
             f"commit `{env.get('commit', '?')}`, packages {env.get('packages', {})}, copy bandwidth "
             f"{env.get('copy_bandwidth_gbs', math.nan):.0f} GB/s (read + write), {env.get('seconds', 0):.0f} s",
             f"command: `{env.get('command', '?')}`", f"skipped: {env.get('skipped', [])}",
             f"errors: {env.get('errors', {})}", "", "## Targets (issue 11)", ""]
    for target in TARGETS:
        lines += target(frames) + [""]
    lines += target_speculative_table(frames)
    for name, frame in frames.items():
        lines += [f"## {name}.csv", "", markdown(profile_digest(frame) if name == "profile" else frame), ""]
    (out / "summary.md").write_text("\n".join(lines))
    print(f"wrote {out / 'summary.md'}", flush=True)


# ---------------------------------------------------------------- targets
def verdict(ok: bool | None) -> str:
    return "NOT MEASURED" if ok is None else ("MET" if ok else "MISSED")


def judged(title: str, ok: bool | None, detail: str, why: list[str] | None = None) -> list[str]:
    """The target's line; under a miss, the terms that account for it."""
    ok = None if ok is None else bool(ok)  # numpy's bools are not `False`
    return [f"- **{title}: {verdict(ok)}**. {detail}"] + ([f"  - {w}" for w in why or []] if ok is False else [])


def known(*values: float) -> bool:
    return all(v is not None and not math.isnan(v) for v in values)


def rate(frames: dict, shape: str, impl: str = "flashspec", prompt: int | None = None,
         column: str = "tok_s") -> float:
    """The worst (lowest) `column` over the prompts, or the one prompt's."""
    ar = frames.get("ar")
    if ar is None:
        return math.nan
    rows = ar[(ar["shape"] == shape) & (ar["impl"] == impl)]
    if prompt is not None:
        rows = rows[rows["prompt_tokens"] == prompt]
    return float(rows[column].min()) if len(rows) and column in rows else math.nan


def roofline(frames: dict, shape: str) -> float:
    return rate(frames, shape, column="roofline_tok_s")


def profile_terms(frames: dict, shape: str) -> list[str]:
    """Per profiled step of the shape: wall = device busy by kernel kind + device idle, and the floor."""
    profile, floor = frames.get("profile"), 1e6 / roofline(frames, shape)
    if profile is None:
        return ["no profile.csv: run section b for the terms of the gap"]
    if "shape" not in profile:  # a profile from before the per-shape split held the 8B shape only
        profile = profile.assign(shape=TARGET)
    lines = []
    for what, part in profile[profile["shape"] == shape].groupby("profile", sort=False):
        totals = part[part["kernel"].str.startswith("(")].set_index("kernel")["us_per_step"]
        wall, busy = totals.get("(wall, profiled)", math.nan), totals.get("(device busy: total)", math.nan)
        kinds = sorted(((k[len("(device busy: "):-1], v) for k, v in totals.items()
                        if k.startswith("(device busy: ") and k != "(device busy: total)"), key=lambda kv: -kv[1])
        split = ", ".join(f"{kind} {us:.0f}" for kind, us in kinds)
        lines.append(f"{what}: wall {wall:.0f} us = device busy {busy:.0f} us ({split}) + device idle "
                     f"{wall - busy:.0f} us; the weight-read floor is {floor:.0f} us")
    return lines or [f"profile.csv has no {shape} rows"]


def ar_gap(frames: dict, shape: str, tok_s: float, needed: float) -> list[str]:
    return [f"{1e6 / tok_s:.0f} us per token measured, {1e6 / needed:.0f} us allowed: "
            f"{1e6 / tok_s - 1e6 / needed:.0f} us to find", *profile_terms(frames, shape)]


def target_ar_fraction(shape: str):
    fraction = AR_FRACTIONS[shape]

    def check(frames: dict) -> list[str]:
        tok_s, top = rate(frames, shape), roofline(frames, shape)
        title = f"AR {shape} >= {fraction:.0%} of roofline"
        if not known(tok_s, top):
            return judged(title, None, "no flashspec row in ar.csv")
        needed = fraction * top
        detail = (f"{tok_s:.0f} tok/s = {tok_s / top:.1%} of the {top:.0f} tok/s roofline (worst prompt); "
                  f"the target is {needed:.0f} tok/s")
        return judged(title, tok_s >= needed, detail, ar_gap(frames, shape, tok_s, needed))

    return check


def target_ar_small(frames: dict) -> list[str]:
    tok_s, title = rate(frames, SMALL), f"AR {SMALL} shape >= {SMALL_TOK_S} tok/s (aim {SMALL_AIM})"
    if not known(tok_s):
        return judged(title, None, "no flashspec row in ar.csv")
    detail = f"{tok_s:.0f} tok/s (worst prompt) = {tok_s / roofline(frames, SMALL):.1%} of its roofline"
    return judged(title, tok_s >= SMALL_TOK_S, detail, ar_gap(frames, SMALL, tok_s, SMALL_TOK_S))


def target_harness(frames: dict) -> list[str]:
    title = (f"harness AR on the real SmolLM2 >= {HARNESS_OF_ENGINE:.0%} of the engine's and >= "
             f"{HARNESS_OF_HF:.0f}x HF static")
    harness = frames.get("harness")
    engine, hf = rate(frames, REAL_SMOLLM2, prompt=64), rate(frames, REAL_SMOLLM2, "hf_static_compile", 64)
    if harness is None or not known(engine, hf):
        return judged(title, None, "needs --smollm2 (section a) and section h")
    row = harness.iloc[0]
    decode, random = row["decode_tok_s"], rate(frames, SMALL, prompt=64)
    engine = row.get("engine_decode_tok_s", engine)  # timed beside the harness, on its model and cache size
    detail = (f"run.py decodes at {decode:.0f} tok/s after a TTFT of {row['ttft_ms']:.0f} ms (its own tok/s, "
              f"prefill included: {row['tok_s']:.0f}); the engine on the same model {engine:.0f} tok/s "
              f"({decode / engine:.2f}x), HF static + compile {hf:.0f} tok/s ({decode / hf:.2f}x); the engine on "
              f"random weights of the same shape {random:.0f} tok/s. KV cache: {row.get('max_context', '?')} "
              f"positions in the harness, {CONTEXT} in the bench")
    why = [f"harness / engine {decode / engine:.2f} (needs {HARNESS_OF_ENGINE}), harness / HF static "
           f"{decode / hf:.2f} (needs {HARNESS_OF_HF:.0f}), engine real / engine random {engine / random:.2f}",
           *profile_terms(frames, SMALL)]
    return judged(title, decode >= HARNESS_OF_ENGINE * engine and decode >= HARNESS_OF_HF * hf, detail, why)


def step_ms(frames: dict, shape: str) -> float:
    latency = frames.get("latency")
    if latency is None:
        return math.nan
    rows = latency[(latency["shape"] == shape) & (latency["k"] == 1)]
    return float(rows["graph_ms"].iloc[0]) if len(rows) else math.nan


def target_cost_ratio(frames: dict) -> list[str]:
    spec, title = frames.get("speculative"), f"draft/target cost ratio c <= {C_MAX}"
    if spec is None:
        return judged(title, None, "no speculative.csv")
    c, c_arm = spec["c"].iloc[0], spec["c_arm"].iloc[0] if "c_arm" in spec else math.nan
    draft, target = step_ms(frames, DRAFT), step_ms(frames, TARGET)
    detail = (f"c = {DRAFT} captured step {draft:.3f} ms / {TARGET} step {target:.3f} ms = {c:.3f}; as the "
              f"engine pays a drafted token (the draft arm's forwards and sampling) c_arm = {c_arm:.3f}")
    why = [f"the draft step may take {C_MAX * target:.3f} ms: {draft - C_MAX * target:.3f} ms to find",
           *profile_terms(frames, DRAFT)]
    return judged(title, c <= C_MAX, detail, why)


def target_verifier(frames: dict) -> list[str]:
    ver, title = frames.get("verifier"), f"verifier <= {VERIFIER_US:.0f} us per call at gamma = {VERIFIER_GAMMA}"
    if ver is None or "us_per_call" not in ver:
        return judged(title, None, "no verifier.csv")
    fused = ver[(ver["gamma"] == VERIFIER_GAMMA) & (ver["impl"] == "triton")].set_index("mode")
    ref = ver[(ver["gamma"] == VERIFIER_GAMMA) & (ver["impl"] == "reference")].set_index("mode")["us_per_call"]
    if fused.empty:
        return judged(title, None, f"no triton row at gamma {VERIFIER_GAMMA}")
    parts, why = [], []
    for mode, row in fused.iterrows():
        kernel = row.get("us_kernel_in_graph", math.nan)
        parts.append(f"{mode} {row['us_per_call']:.1f} us (reference {ref.get(mode, math.nan):.1f} us)")
        why.append(f"{mode}: {row['us_per_call']:.1f} us per call = the kernel alone in a graph {kernel:.1f} us + "
                   f"launch and host work {row['us_per_call'] - kernel:.1f} us (direct launches: "
                   f"{row.get('direct_launches', 'not recorded')}); kernels: {row.get('kernels', 'not recorded')}")
    tuned = ver[ver["impl"].str.startswith("triton[")]
    if not tuned.empty:  # flashspec/bench/verifier.py's TUNINGS, sampled, at gamma 8
        why.append("sampled under other launch shapes (kernel alone in a graph): " + "; ".join(
            f"{row['impl'][7:-1]} {row.get('us_kernel_in_graph', math.nan):.1f} us" for _, row in tuned.iterrows()))
    ok = bool((fused["us_per_call"] <= VERIFIER_US).all()) and {"greedy", "sampled"} <= set(fused.index)
    return judged(f"{title}, V = {LLAMA3_IDS['vocab_size']}, greedy and sampled", ok, "; ".join(parts), why)


def target_efficiency(frames: dict) -> list[str]:
    spec, title = frames.get("speculative"), f"speculative efficiency >= {EFFICIENCY:.2f} in every (alpha, gamma)"
    if spec is None:
        return judged(title, None, "no speculative.csv")
    worst = spec.loc[spec["efficiency"].idxmin()]
    detail = (f"min {worst['efficiency']:.3f} at alpha {worst['alpha']}, gamma {int(worst['gamma'])}; "
              f"{int((spec['efficiency'] >= EFFICIENCY).sum())} of {len(spec)} cells reach it")
    timed = [c for c in spec.columns if c.startswith("timed_")]
    why = [f"alpha {r['alpha']}, gamma {int(r['gamma'])}: {r['efficiency']:.3f}; one-off costs inside its timing: "
           + (", ".join(f"{c[len('timed_'):]} {int(r[c])}" for c in timed) or "not counted")
           for _, r in spec[spec["efficiency"] < EFFICIENCY].iterrows()]
    why.append("the table below sets each cell against a cost-aware ideal")
    return judged(title, bool((spec["efficiency"] >= EFFICIENCY).all()), detail, why)


def target_ttft(frames: dict) -> list[str]:
    ours, hf = rate(frames, TARGET, prompt=1024, column="ttft_ms"), rate(
        frames, TARGET, "hf_static_compile", 1024, "ttft_ms")
    title = f"TTFT reported, 1024-token prompt, {TARGET}"
    if not known(ours):
        return judged(title, None, "no flashspec 1024-token row in ar.csv")
    return judged(title, True, f"{ours:.1f} ms (HF static + compile: {hf:.1f} ms)")


TARGETS = (target_ar_fraction(TARGET), target_ar_fraction(DRAFT), target_ar_small, target_harness,
           target_cost_ratio, target_verifier, target_efficiency, target_ttft)


def target_speculative_table(frames: dict) -> list[str]:
    """Each cell against a cost-aware ideal: the measured verification cost t(gamma+1) / t(1) and the realized
    alpha put into the formula; what it leaves is host overhead and the draft's sampling kernels."""
    spec, latency = frames.get("speculative"), frames.get("latency")
    if spec is None or latency is None:
        return []
    target = latency[latency["shape"] == TARGET].set_index("k")["graph_ms"]
    lines = ["## speculative cells against a cost-aware ideal", "",
             "| alpha | gamma | efficiency | realized alpha | t(g+1)/t(1) | efficiency vs cost-aware ideal |",
             "|---|---|---|---|---|---|"]
    for row in spec.itertuples():
        ratio = target.get(row.gamma + 1, math.nan) / target.get(1, math.nan)
        a, g = row.realized_alpha, row.gamma
        tokens = g + 1 if a == 1 else (1 - a ** (g + 1)) / (1 - a)
        aware = tokens / (g * row.c + ratio)
        lines.append(f"| {row.alpha} | {g} | {row.efficiency:.3f} | {a:.3f} | {ratio:.3f} | "
                     f"{row.speedup / aware:.3f} |")
    return lines + [""]


# ---------------------------------------------------------------- tables and figures
def profile_digest(frame: pd.DataFrame) -> pd.DataFrame:
    """The totals of each profiled step and its five slowest kernels."""
    keys = [k for k in ("shape", "profile") if k in frame]
    totals = frame["kernel"].str.startswith("(")
    rank = frame[~totals].groupby(keys, sort=False).cumcount().reindex(frame.index)  # kernels come slowest first
    return frame[totals | (rank < 5)]


def markdown(frame: pd.DataFrame) -> str:
    rows = frame.itertuples(index=False)
    cells = [[f"{v:.4g}" if isinstance(v, float) else str(v) for v in row] for row in rows]
    head = "| " + " | ".join(map(str, frame.columns)) + " |"
    return "\n".join([head, "|" + "---|" * len(frame.columns)] + ["| " + " | ".join(c) + " |" for c in cells])


def figures(out: Path, device: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = {"ar": plot_ar, "latency": plot_latency, "speculative": plot_speculative,
             "verifier": plot_verifier, "family": plot_family}
    for name, plot in plots.items():
        path = out / f"{name}.csv"
        if not path.exists():
            continue
        fig = plot(pd.read_csv(path), plt)
        fig.suptitle(device, fontsize=8, x=0.99, ha="right")
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=130)
        plt.close(fig)


def plot_ar(frame: pd.DataFrame, plt):
    shapes = list(dict.fromkeys(frame["shape"]))
    fig, axes = plt.subplots(1, len(shapes), figsize=(5.5 * len(shapes), 4), squeeze=False)
    for ax, shape in zip(axes[0], shapes, strict=True):
        data = frame[frame["shape"] == shape]
        data.pivot_table(index="prompt_tokens", columns="impl", values="tok_s").plot.bar(ax=ax, rot=0)
        top = data["roofline_tok_s"].iloc[0]
        ax.axhline(top, color="black", linestyle="--", label=f"roofline {top:.0f}")
        if shape in AR_FRACTIONS:
            ax.axhline(AR_FRACTIONS[shape] * top, color="grey", linestyle=":", label="target")
        ax.set(title=f"{shape}: AR decode, batch 1", xlabel="prompt tokens", ylabel="tokens / s")
        ax.legend(fontsize=7)
    return fig


def plot_latency(frame: pd.DataFrame, plt):
    fig, ax = plt.subplots(figsize=(6, 4))
    for shape, data in frame.groupby("shape"):
        ax.plot(data["k"], data["graph_ms"], marker="o", label=f"{shape} captured graph")
        ax.plot(data["k"], data["eager_ms"], marker="x", linestyle="--", label=f"{shape} eager")
    ax.set(yscale="log", xlabel="new tokens k in the forward", ylabel="ms per forward",
           title="target forward latency (context 1024)")
    ax.legend(fontsize=7)
    return fig


def plot_speculative(frame: pd.DataFrame, plt):
    fig, ax = plt.subplots(figsize=(6, 4))
    for (gamma, data), color in zip(frame.groupby("gamma"), ("C0", "C1", "C2", "C3"), strict=False):
        ax.plot(data["alpha"], data["speedup"], marker="o", color=color, label=f"measured, gamma={gamma}")
        ax.plot(data["alpha"], data["ideal"], linestyle="--", color=color, label=f"ideal, gamma={gamma}")
    ax.axhline(1, color="black", linewidth=0.8)
    ax.set(xlabel="acceptance rate alpha", ylabel="speedup over our AR",
           title=f"8B target, 1B-shape draft (c = {frame['c'].iloc[0]:.3f})")
    ax.legend(fontsize=7)
    return fig


def plot_verifier(frame: pd.DataFrame, plt):
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, (mode, data) in zip(axes, frame.groupby("mode"), strict=False):
        for impl, part in data.groupby("impl"):
            ax.plot(part["gamma"], part["us_per_call"], marker="o", label=impl)
        if "us_kernel_in_graph" in data:
            part = data.dropna(subset=["us_kernel_in_graph"])
            ax.plot(part["gamma"], part["us_kernel_in_graph"], marker="x", linestyle=":", label="triton, kernel only")
        ax.axhline(VERIFIER_US, color="grey", linestyle=":", label=f"{VERIFIER_US:.0f} us target")
        ax.set(yscale="log", xlabel="gamma", ylabel="us per call",
               title=f"verifier, V = {LLAMA3_IDS['vocab_size']}, {mode}")
        ax.legend(fontsize=7)
    return fig


def plot_family(frame: pd.DataFrame, plt):
    fig, ax = plt.subplots(figsize=(9, 4))
    frame.pivot_table(index="run", columns="dataset", values="speedup").plot.bar(ax=ax, rot=45)
    ax.axhline(1, color="black", linewidth=0.8)
    ax.set(ylabel="speedup over AR", title="trained family", xlabel="")
    return fig
