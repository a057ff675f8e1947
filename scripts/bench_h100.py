"""Decoding speed on one GPU (issue 5), with random-weight Llama shapes (timing only), into CSVs and figures.

    PYTHONUNBUFFERED=1 python scripts/bench_h100.py --out results/h100            # everything, < 10 minutes
    PYTHONUNBUFFERED=1 python scripts/bench_h100.py --out /tmp/h100 --quick       # a smoke test, fewer points
    python scripts/bench_h100.py --report-only results/h100                       # redo figures + summary

Sections (--sections, default all):
  a  AR decode tok/s, batch 1, after a 64- and a 1024-token prompt, Llama-3-8B and Llama-3.2-1B shapes:
     flashspec against the memory roofline (weight bytes per token / measured copy bandwidth) and against
     Hugging Face `generate` (eager; static cache + torch.compile) on the same weights; plus checks (our
     logits against Hugging Face's, graph against eager, greedy tokens against `generate`) and the count of
     host-device synchronisations per step
  b  target forward latency for k = 1..17 new tokens (captured graph vs eager), and a kernel profile
  c  speculative decoding with the controlled-acceptance arm (1B-shape draft) for alpha x gamma: measured
     speedup over our AR next to the ideal (1 - a^(g+1)) / ((1 - a)(g c + 1))
  d  the verifier per call: fused Triton kernel, PyTorch reference, torch.compile of the reference
  e  the project's trained family (results/models) on MT-Bench / HumanEval / Alpaca, per arm and per bandit;
     runs only when results/models/flashspec-target and the prompt files exist
Every CSV is written as soon as its section ends; a step that would not finish before --deadline-s is
skipped and logged, so a run always ends with what it measured.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
import traceback
import warnings
from importlib import metadata
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

import flashspec as fs  # noqa: E402
from flashspec.arms import DraftModelArm, build_arm  # noqa: E402
from flashspec.arms.controlled import ControlledArm  # noqa: E402
from flashspec.bandit import SELECTORS  # noqa: E402
from flashspec.models.native import NativeLlama  # noqa: E402
from flashspec.models.tiny import tiny_tokenizer  # noqa: E402
from flashspec.verify import verify_reference, verify_triton  # noqa: E402

DEVICE = "cuda"
VOCAB, BOS, EOS = 128256, 128000, 128001
SHAPES = {
    "llama3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=8, tie_word_embeddings=False),
    "llama3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                        num_attention_heads=32, num_key_value_heads=8, head_dim=64, tie_word_embeddings=True),
}
TARGET, DRAFT = "llama3-8b", "llama3.2-1b"
PROMPT_LENS = (1024, 64)  # longest first: Hugging Face sizes its static cache by the first call; both fit
CONTEXT = 1024 + 256 + 64  # every model's KV cache: the longest prompt, the new tokens, a draft's overhang
EMBED_STD, HEAD_SCALE = 32.0, 1e-4  # see random_llama
PACKAGES = ("torch", "transformers", "triton", "tokenizers", "numpy", "pandas")


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - START:7.1f}s] {msg}", flush=True)


START = time.perf_counter()


# ---------------------------------------------------------------- measuring
def sync() -> None:
    torch.cuda.synchronize()


def device_ms(fn, reps: int) -> float:
    """Mean milliseconds per call of `fn` over `reps` back-to-back calls (after one), timed by CUDA events."""
    fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    sync()
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    sync()
    return start.elapsed_time(end) / reps


def wall_us(fn, reps: int) -> float:
    """Mean microseconds per call as a caller sees it: back-to-back calls, one synchronisation at the end."""
    fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    sync()
    return (time.perf_counter() - t0) / reps * 1e6


def copy_bandwidth() -> float:
    """Bytes read plus bytes written per second by a 2 GiB device-to-device copy (median of 10)."""
    src = torch.randn(1 << 30, device=DEVICE, dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    times = []
    for _ in range(12):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        sync()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * src.numel() * src.element_size() / statistics.median(times[2:])


def decode_rate(result) -> float:
    """Tokens per second after the first token (the prefill and its sample excluded)."""
    return (result.new_tokens - 1) / (result.wall_time_s - result.ttft_s)


def count_syncs(fn) -> int:
    """Host-device synchronisations that `fn` triggers (CUDA's sync debug mode warns at each)."""
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fn()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def ideal_speedup(alpha: float, gamma: int, c: float) -> float:
    """Leviathan et al.: expected tokens per step over the step's cost in target forwards."""
    tokens = gamma + 1 if alpha == 1 else (1 - alpha ** (gamma + 1)) / (1 - alpha)
    return tokens / (gamma * c + 1)


# ---------------------------------------------------------------- models and prompts
def random_llama(shape: str, seed: int = 0) -> LlamaForCausalLM:
    """A Llama of this shape with random bf16 weights on the GPU. One change leaves the cost alone and makes
    greedy decoding numerically stable: the embedding is large and an untied LM head is it shifted by one
    row, so the model continues x -> x + 1 (tied: x -> x) with a logit margin far above bf16 rounding, and
    every block shape (AR step, verification, Hugging Face) yields the same greedy tokens. Without it the
    top logits of a random model tie within rounding and the target's greedy continuation depends on the
    block shape, which the controlled-acceptance arm cannot allow."""
    ids = dict(bos_token_id=BOS, eos_token_id=EOS, pad_token_id=EOS)
    config = LlamaConfig(vocab_size=VOCAB, **ids, **SHAPES[shape])
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(DEVICE):
            model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    finally:
        torch.set_default_dtype(default)
    with torch.no_grad():
        embed = model.model.embed_tokens.weight.normal_(0, EMBED_STD)
        if not config.tie_word_embeddings:
            model.lm_head.weight.copy_(embed.roll(1, dims=0) * HEAD_SCALE)
    return model


def weight_bytes(model: LlamaForCausalLM) -> int:
    """Bytes one decoding step must read: every weight once, but of an untied embedding only one row."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())  # tied weights are listed once
    if not model.config.tie_word_embeddings:
        embed = model.model.embed_tokens.weight
        total -= embed.numel() * embed.element_size()
    return total


def prompt_ids(n: int) -> torch.Tensor:
    # Far from the tokenizer's specials (eos 257) and the config's (128000+): x -> x + 1 never reaches them.
    return torch.randint(1000, 60000, (n,), generator=torch.Generator().manual_seed(n))


def make_engine(target, tokenizer, policy: str = "none", arms=(), gamma: int = 4,
                verifier: str = "auto") -> fs.SpeculativeEngine:
    cfg = fs.FlashSpecConfig(
        target=fs.TargetConfig(device=DEVICE, dtype="bfloat16", max_context=target.max_context),
        gammas=[gamma], bandit=fs.BanditConfig(policy), verifier=verifier,
    )
    return fs.SpeculativeEngine(cfg, target=target, tokenizer=tokenizer, arms=list(arms))


# ---------------------------------------------------------------- the benchmark
class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.out = args, args.out
        self.out.mkdir(parents=True, exist_ok=True)
        self.tokenizer = tiny_tokenizer()  # ids only: nothing is decoded to text that matters
        self.hf: dict[str, LlamaForCausalLM] = {}  # untouched modules for Hugging Face's generate
        self.native: dict[str, NativeLlama] = {}  # ours, on their own copy of the same weights
        self.ours: dict[tuple[str, int], list[int]] = {}  # AR tokens, to compare with generate's
        self.step_ms: dict[str, float] = {}  # graph replay of one token, per shape
        self.prompts = {n: prompt_ids(n) for n in PROMPT_LENS}
        self.skipped: list[str] = []
        self.quick = args.quick
        self.new = 64 if args.quick else args.new_tokens

    def left(self) -> float:
        return self.args.deadline_s - (time.perf_counter() - START)

    def enough(self, seconds: float, what: str) -> bool:
        if self.left() >= seconds:
            return True
        log(f"SKIPPED {what}: {self.left():.0f} s left of --deadline-s, it needs about {seconds:.0f}")
        self.skipped.append(what)
        return False

    def save(self, rows: list[dict], name: str) -> pd.DataFrame:
        frame = pd.DataFrame(rows)
        frame.to_csv(self.out / f"{name}.csv", index=False)
        log(f"wrote {name}.csv\n{frame.to_string(max_cols=14)}")
        return frame

    def shapes(self) -> list[str]:
        return list(SHAPES)

    def model(self, shape: str) -> NativeLlama:
        if shape not in self.native:
            t0 = time.perf_counter()
            self.hf[shape] = random_llama(shape)
            self.native[shape] = NativeLlama(random_llama(shape), CONTEXT, graphs=True)
            log(f"built {shape} twice (ours, Hugging Face's) in {time.perf_counter() - t0:.1f} s")
        return self.native[shape]

    # ------------------------------------------------------------ environment
    def environment(self) -> dict:
        props = torch.cuda.get_device_properties(0)
        env = {
            "device": torch.cuda.get_device_name(0), "sm_count": props.multi_processor_count,
            "memory_gib": round(props.total_memory / 2**30, 1), "cuda": torch.version.cuda,
            "python": platform.python_version(), "commit": self.args.commit or git_commit(),
            "packages": {p: package_version(p) for p in PACKAGES}, "command": " ".join(sys.argv),
            "quick": self.quick, "new_tokens": self.new,
        }
        env["copy_bandwidth_gbs"] = copy_bandwidth() / 1e9
        log(f"environment: {env}")
        return env

    # ------------------------------------------------------------ a: AR decode
    def checks(self) -> list[dict]:
        """Our logits against Hugging Face's forward, and the captured step against our eager forward."""
        rows, prompt = [], self.prompts[64].to(DEVICE)
        for shape in self.shapes():
            graph, hf = self.model(shape), self.hf[shape]
            eager = NativeLlama(hf, CONTEXT)
            with torch.inference_mode():
                reference = hf(prompt[None]).logits[0].float()
            rows.append(compare(shape, "prefill: native eager vs HF forward", eager.forward(prompt).logits,
                                reference))
            graph.reset()
            graph.forward(prompt)
            for k in (1, 9, 17):
                block = prompt_ids(k).to(DEVICE)
                eager.crop(64)
                graph.crop(64)
                ours = graph.forward(block).logits
                theirs = eager.forward(block).logits
                rows.append(compare(shape, f"decode k={k}: graph vs eager", ours, theirs))
            del eager
        return rows

    def ar_ours(self) -> list[dict]:
        rows = []
        for shape in self.shapes():
            model = self.model(shape)
            engine = make_engine(model, self.tokenizer)
            for n in PROMPT_LENS:
                t0 = time.perf_counter()
                engine.generate(self.prompts[n], self.new)  # compiles the layer and captures the graph
                warm = time.perf_counter() - t0
                result = engine.generate(self.prompts[n], self.new)
                self.ours[(shape, n)] = result.token_ids
                rows.append(self.ar_row(shape, n, "flashspec", decode_rate(result), result.new_tokens, warm,
                                        ttft_ms=result.ttft_s * 1e3))
            syncs = count_syncs(lambda e=engine: e.generate(self.prompts[64], 32))
            rows[-1]["syncs_per_32_tokens"] = syncs  # 31 decoding steps + the prefill's
        return rows

    def ar_row(self, shape: str, prompt: int, impl: str, rate: float, new: int, warm_s: float, **extra):
        roofline = self.env["copy_bandwidth_gbs"] * 1e9 / weight_bytes(self.hf[shape])
        return dict(shape=shape, prompt_tokens=prompt, impl=impl, tok_s=rate, roofline_tok_s=roofline,
                    frac_roofline=rate / roofline, new_tokens=new, warmup_s=warm_s, **extra)

    def ar_hf(self) -> list[dict]:
        rows = []
        shapes = [DRAFT] if self.quick else self.shapes()  # the smoke test keeps the 8B compile out
        for shape in shapes:
            model = self.hf[shape]
            eager_new = 16 if self.quick else self.args.hf_eager_tokens
            static = {"cache_implementation": "static"}  # generate then compiles the decoding step
            for impl, kwargs, new, need in (("hf_eager", {}, eager_new, 40),
                                             ("hf_static_compile", static, self.new, 200)):
                if not self.enough(need, f"{impl} {shape}"):
                    continue
                t0 = time.perf_counter()
                hf_generate(model, self.prompts[PROMPT_LENS[0]], new if kwargs else 4, **kwargs)
                warm = time.perf_counter() - t0
                for n in PROMPT_LENS:
                    first = hf_generate(model, self.prompts[n], 1, **kwargs)[1]
                    tokens, seconds = hf_generate(model, self.prompts[n], new, **kwargs)
                    same = tokens == self.ours.get((shape, n), [])[:new]
                    rows.append(self.ar_row(shape, n, impl, (new - 1) / (seconds - first), new, warm,
                                            ttft_ms=first * 1e3, matches_flashspec=same,
                                            compiled=hasattr(model, "_compiled_call")))
                log(f"{impl} {shape}: {rows[-2:]}")
        return rows

    # ------------------------------------------------------------ b: verification latency and profile
    def latency(self) -> list[dict]:
        rows, ks = [], ([1, 2, 5, 9, 17] if self.quick else range(1, 18))
        for shape in self.shapes():
            graph = self.model(shape)
            eager = NativeLlama(self.hf[shape], CONTEXT)
            start = PROMPT_LENS[0]
            for model in (graph, eager):
                model.reset()
                model.forward(self.prompts[start])
            for k in ks:
                block = prompt_ids(k).to(DEVICE)
                row = dict(shape=shape, k=k, context=start)
                for name, model, reps in (("graph_ms", graph, 20), ("eager_ms", eager, 3)):
                    row[name] = device_ms(lambda m=model, b=block, s=start: (m.crop(s), m.forward(b)), reps)
                rows.append(row)
            self.step_ms[shape] = rows[-len(ks)]["graph_ms"]
            del eager
        return rows

    def profile(self) -> list[dict]:
        """Kernels of the captured 8B decoding step (k = 1), and of our AR engine's decoding steps: a
        generation of 129 tokens less one of a single token (the same prefill)."""
        model, block, start, steps = self.model(TARGET), prompt_ids(1).to(DEVICE), PROMPT_LENS[0], 128

        def replays():
            for _ in range(steps):
                model.crop(start)
                model.forward(block)

        engine = make_engine(model, self.tokenizer)
        generation = kernel_times(lambda: engine.generate(self.prompts[64], steps + 1))
        prefill = kernel_times(lambda: engine.generate(self.prompts[64], 1))
        decoding = (generation[0] - prefill[0], {
            name: [calls - prefill[1].get(name, [0, 0])[0], us - prefill[1].get(name, [0, 0])[1]]
            for name, (calls, us) in generation[1].items()
        })
        graph = kernel_table("graph step k=1", kernel_times(replays), steps)
        return graph + kernel_table("engine AR step", decoding, steps)

    # ------------------------------------------------------------ c: speculative decoding at set acceptance
    def speculative(self) -> list[dict]:
        alphas, gammas = ([0.8], [4]) if self.quick else ([0.5, 0.7, 0.8, 0.9], [2, 4, 8])
        target, draft = self.model(TARGET), self.model(DRAFT)
        c = self.step_ms[DRAFT] / self.step_ms[TARGET]
        prompt = self.prompts[64]
        ar = make_engine(target, self.tokenizer)
        ar.generate(prompt, self.new)
        base = ar.generate(prompt, self.new)
        arm = ControlledArm(target, DraftModelArm(draft, name="draft"), alphas[0], self.new + max(gammas) + 1)
        verifier = "triton" if verifier_ok() else "reference"
        rows = []
        for gamma in gammas:
            engine = make_engine(target, self.tokenizer, "fixed", [arm], gamma, verifier)
            spent = time_learning(engine)
            engine.generate(prompt, self.new)  # captures the target's n = gamma + 1 step and the draft's
            for alpha in alphas:
                if not self.enough(10, f"speculative alpha={alpha} gamma={gamma}"):
                    continue
                arm.rate, arm.tested, arm.hits, spent[0] = alpha, 0, 0, 0.0
                result = engine.generate(prompt, self.new)
                speedup, ideal = decode_rate(result) / decode_rate(base), ideal_speedup(alpha, gamma, c)
                rows.append(dict(
                    alpha=alpha, gamma=gamma, c=c, speedup=speedup, ideal=ideal, efficiency=speedup / ideal,
                    realized_alpha=arm.realized_rate,
                    ideal_at_realized=ideal_speedup(arm.realized_rate, gamma, c),
                    tau=result.new_tokens / max(len(result.emitted), 1), tok_s=decode_rate(result),
                    ar_tok_s=decode_rate(base), matches_ar=result.token_ids == base.token_ids,
                    learn_us_per_step=spent[0] / max(len(result.emitted), 1) * 1e6, verifier=verifier,
                ))
        return rows

    # ------------------------------------------------------------ d: the verifier per call
    def verifier(self) -> list[dict]:
        gammas = [8] if self.quick else [1, 4, 8, 16]
        compiled = torch.compile(verify_reference)
        impls = {"triton": verify_triton, "reference": verify_reference, "compiled_reference": compiled}
        rows = []
        modes = {"greedy": fs.SamplingConfig(), "sampled": fs.SamplingConfig(0.8, top_p=0.9)}
        for mode, sampling in modes.items():
            for gamma in gammas:
                args = verifier_inputs(gamma, sampling)
                n_ref, tok_ref = verify_reference(*args)
                n_ref = int(n_ref)
                for name, fn in impls.items():
                    if fn is None or not self.enough(20, f"verifier {name} {mode} gamma={gamma}"):
                        continue
                    row = dict(mode=mode, gamma=gamma, impl=name)
                    try:  # one implementation failing on this device leaves the others' numbers
                        n, tokens = fn(*args)
                        call = lambda f=fn, a=args: f(*a)  # noqa: E731
                        row |= dict(us_per_call=wall_us(call, 100), agrees_with_reference=int(n) == n_ref
                                    and torch.equal(tok_ref[0, : n_ref + 1], tokens[0, : n_ref + 1]))
                        if name == "triton":
                            row["us_kernel_in_graph"] = graph_us(call)
                    except Exception as err:
                        row["error"] = repr(err)[:200]
                    rows.append(row)
        return rows

    # ------------------------------------------------------------ e: the trained family
    def family(self) -> list[dict]:
        models, data = self.args.models_dir, self.args.data_dir
        if not (models / "flashspec-target").is_dir() or not data.is_dir():
            log(f"section e skipped: no {models / 'flashspec-target'} or no prompt folder {data}")
            return []
        from flashspec.harness.data import DatasetConfig, encode, load_prompts  # only this section needs it

        cfg = fs.TargetConfig(model=str(models / "flashspec-target"), device=DEVICE, dtype="bfloat16")
        base = fs.SpeculativeEngine(fs.FlashSpecConfig(target=cfg, bandit=fs.BanditConfig("none")))
        target, tokenizer = base.target, base.tokenizer
        drafts = sorted(d for d in models.glob("flashspec-draft-*") if d.is_dir())
        arm_cfgs = [fs.ArmConfig("prompt_lookup")] + [fs.ArmConfig("draft_model", str(d)) for d in drafts]
        arms = [build_arm(a, target, tokenizer, cfg) for a in arm_cfgs]
        runs = {arm.name: fs.BanditConfig("fixed", arm=i) for i, arm in enumerate(arms)}
        runs |= {policy: fs.BanditConfig(policy) for policy in sorted(SELECTORS) if policy != "fixed"}
        limit = 3 if self.quick else self.args.family_prompts
        sets = {"mt_bench": ("mt_bench.jsonl", True), "humaneval": ("humaneval.jsonl", False),
                "alpaca": ("alpaca.jsonl", True)}
        prompts = {name: [encode(tokenizer, [{"role": "user", "content": p.turns[0]}], chat)
                          for p in load_prompts(DatasetConfig(name, file, chat=chat, limit=limit), str(data))]
                   for name, (file, chat) in sets.items()}
        new = self.args.family_tokens
        engines = {"autoregressive": base} | {
            run: fs.SpeculativeEngine(fs.FlashSpecConfig(cfg, gammas=[4], bandit=bandit), target=target,
                                      tokenizer=tokenizer, arms=arms)
            for run, bandit in runs.items()
        }
        rows = []
        for run, engine in engines.items():
            if not self.enough(30, f"family {run}"):
                continue
            engine.generate(prompts["mt_bench"][0], 16)  # captures the graphs this engine's steps use
            for name, ids in prompts.items():
                results = [engine.generate(p, new) for p in ids]
                tokens = sum(r.new_tokens - 1 for r in results)
                seconds = sum(r.wall_time_s - r.ttft_s for r in results)
                steps = sum(len(r.emitted) for r in results)
                rows.append(dict(dataset=name, run=run, prompts=len(ids), tok_s=tokens / seconds,
                                 tau=sum(r.new_tokens for r in results) / steps))
        frame = pd.DataFrame(rows)
        if not frame.empty:
            ar = frame[frame["run"] == "autoregressive"].set_index("dataset")["tok_s"]
            frame["speedup"] = frame["tok_s"] / frame["dataset"].map(ar)
        return frame.to_dict("records")

    # ------------------------------------------------------------ the run
    def run(self) -> None:
        self.env = self.environment()
        self.env["errors"] = {}
        wanted = set(self.args.sections.split(","))
        steps = [  # (section, need seconds, name, step); most wanted first, a CSV as each ends
            ("a", 0, "checks", self.checks), ("a", 0, "ar", self.ar_ours),
            ("bc", 0, "latency", self.latency), ("bc", 30, "profile", self.profile),
            ("c", 60, "speculative", self.speculative), ("a", 60, "ar", self.ar_hf),
            ("d", 60, "verifier", self.verifier), ("e", 60, "family", self.family),
        ]
        done: dict[str, list[dict]] = {}
        for sections, need, name, step in steps:
            if not wanted & set(sections) or not self.enough(need, f"{name} ({step.__name__})"):
                continue
            try:
                rows = step()
            except Exception as err:  # one broken step must not cost the others their numbers
                log(f"FAILED {step.__name__}: {traceback.format_exc()}")
                self.env["errors"][step.__name__] = repr(err)
                continue
            done[name] = done.get(name, []) + (rows or [])
            if done[name]:
                self.save(done[name], name)
        self.env["skipped"] = self.skipped
        self.env["seconds"] = time.perf_counter() - START
        (self.out / "env.json").write_text(json.dumps(self.env, indent=2) + "\n")
        report(self.out)
        log("done")


# ---------------------------------------------------------------- helpers of the sections
def compare(shape: str, what: str, ours: torch.Tensor, reference: torch.Tensor) -> dict:
    ours, reference = ours.float(), reference.float()
    return dict(shape=shape, check=what, rel_err=float((ours - reference).norm() / reference.norm()),
                argmax_agree=float((ours.argmax(-1) == reference.argmax(-1)).float().mean()))


@torch.inference_mode()
def hf_generate(model, prompt: torch.Tensor, new: int, **kwargs) -> tuple[list[int], float]:
    ids = prompt[None].to(DEVICE)
    sync()
    t0 = time.perf_counter()
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                         do_sample=False, pad_token_id=EOS, **kwargs)
    sync()
    return out[0, ids.shape[1]:].tolist(), time.perf_counter() - t0


def time_learning(engine: fs.SpeculativeEngine) -> list[float]:
    """Wrap the engine's bandit bookkeeping with a timer; returns the accumulator (seconds)."""
    spent, learn = [0.0], engine._learn

    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        learn(*args, **kwargs)
        spent[0] += time.perf_counter() - t0

    engine._learn = timed
    return spent


def verifier_inputs(gamma: int, sampling: fs.SamplingConfig) -> tuple:
    g = torch.Generator(DEVICE).manual_seed(gamma)
    logits = torch.randn(1, gamma + 1, VOCAB, device=DEVICE, generator=g) * 3
    tokens = logits[:, :gamma].argmax(-1)  # drafts the greedy target accepts: the whole path runs
    probs = None
    if not sampling.greedy:
        probs = (torch.randn(1, gamma, VOCAB, device=DEVICE, generator=g) * 3).softmax(-1)
    return logits, tokens, probs, sampling, torch.rand(1, gamma + 1, device=DEVICE, generator=g)


def verifier_ok() -> bool:
    """The fused kernel agrees with the reference on this device (else section c uses the reference)."""
    if verify_triton is None:
        return False
    try:
        for sampling in (fs.SamplingConfig(), fs.SamplingConfig(0.8, top_p=0.9)):
            args = verifier_inputs(4, sampling)
            (n, tokens), (n_ref, tok_ref) = verify_triton(*args), verify_reference(*args)
            n, n_ref = int(n), int(n_ref)
            if n != n_ref or not torch.equal(tokens[0, : n + 1], tok_ref[0, : n + 1]):
                return False
    except Exception as err:  # a broken kernel must not stop the benchmark
        log(f"verify_triton failed: {err!r}")
        return False
    return True


def graph_us(fn, reps: int = 100) -> float:
    """Device microseconds per call of `fn` captured in a CUDA graph (launch overhead removed)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return device_ms(graph.replay, reps) * 1e3


KERNEL_KINDS = (  # name fragments -> kind, first match wins
    (("gemv", "gemm", "nvjet", "cutlass", "xmma", "sm90"), "matmul"),
    (("fmha", "attention", "flash", "softmax"), "attention"),
    (("triton",), "fused (inductor/triton)"),
    (("copy", "memcpy", "memset", "fill", "cat", "index"), "copy/index"),
)


def kernel_kind(name: str) -> str:
    low = name.lower()
    return next((kind for keys, kind in KERNEL_KINDS if any(k in low for k in keys)), "other")


def kernel_times(fn) -> tuple[float, dict[str, list[float]]]:
    """Wall seconds of `fn` under the profiler, and per kernel name [calls, device microseconds]."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    sync()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        fn()
        sync()
        wall = time.perf_counter() - t0
    kernels: dict[str, list[float]] = {}
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            entry = kernels.setdefault(event.name, [0, 0.0])
            entry[0] += 1
            entry[1] += getattr(event, "device_time", None) or getattr(event, "cuda_time", 0.0)
    return wall, kernels


def kernel_table(what: str, times: tuple[float, dict[str, list[float]]], steps: int) -> list[dict]:
    """Per step: wall time, device-busy time by kernel kind, the top kernels. Wall - busy = device idle."""
    wall, kernels = times
    rows = [dict(profile=what, kernel=name[:120], kind=kernel_kind(name), calls_per_step=calls / steps,
                 us_per_step=us / steps) for name, (calls, us) in kernels.items() if calls > 0]
    rows.sort(key=lambda r: -r["us_per_step"])
    summary = [dict(profile=what, kernel="(wall, profiled)", kind="total", us_per_step=wall * 1e6 / steps)]
    for kind in ["total"] + sorted({r["kind"] for r in rows}):
        part = [r for r in rows if kind in ("total", r["kind"])]
        summary.append(dict(profile=what, kernel=f"(device busy: {kind})", kind=kind,
                            us_per_step=sum(r["us_per_step"] for r in part),
                            calls_per_step=sum(r["calls_per_step"] for r in part)))
    return summary + rows[:25]


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no git here: pass --commit)"


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


# ---------------------------------------------------------------- report: summary.md and figures
def report(out: Path) -> None:
    figures(out)
    frames = {p.stem: pd.read_csv(p) for p in sorted(out.glob("*.csv"))}
    env = json.loads((out / "env.json").read_text()) if (out / "env.json").exists() else {}
    lines = [f"# {env.get('device', '?')}: flashspec decoding speed", "",
             f"commit `{env.get('commit', '?')}`, packages {env.get('packages', {})}, copy bandwidth "
             f"{env.get('copy_bandwidth_gbs', float('nan')):.0f} GB/s (read + write), "
             f"{env.get('seconds', 0):.0f} s",
             f"command: `{env.get('command', '?')}`", f"skipped: {env.get('skipped', [])}",
             f"errors: {env.get('errors', {})}", ""]
    for check in (target_ar, target_speculative, target_verifier):
        lines += check(frames) + [""]
    for name, frame in frames.items():
        lines += [f"## {name}.csv", "", markdown(frame if name != "profile" else frame.head(40)), ""]
    (out / "summary.md").write_text("\n".join(lines))
    log(f"wrote {out / 'summary.md'}")


def markdown(frame: pd.DataFrame) -> str:
    rows = frame.itertuples(index=False)
    cells = [[f"{v:.4g}" if isinstance(v, float) else str(v) for v in row] for row in rows]
    head = "| " + " | ".join(map(str, frame.columns)) + " |"
    return "\n".join([head, "|" + "---|" * len(frame.columns)] + ["| " + " | ".join(c) + " |" for c in cells])


def verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def target_ar(frames: dict) -> list[str]:
    """AR >= 90% of the roofline for the 8B shape, and where the time of a token goes (from the profile)."""
    ar = frames.get("ar")
    if ar is None:
        return ["## target: AR >= 90% of roofline (8B): not measured"]
    ours = ar[(ar["shape"] == TARGET) & (ar["impl"] == "flashspec")]
    worst = ours["frac_roofline"].min()
    roofline_ms = 1e3 / ours["roofline_tok_s"].iloc[0]
    lines = [f"## target: AR >= 90% of roofline (8B): {verdict(worst >= 0.9)}",
             f"worst {worst:.1%} of the roofline ({ours['tok_s'].min():.0f} tok/s, roofline "
             f"{ours['roofline_tok_s'].iloc[0]:.0f} tok/s = {roofline_ms:.3f} ms per token); the 90% target "
             f"is {roofline_ms / 0.9:.3f} ms per token, measured {1e3 / ours['tok_s'].min():.3f} ms"]
    profile = frames.get("profile")
    if profile is None:
        return lines
    for what, part in profile.groupby("profile", sort=False):
        totals = part[part["kernel"].str.startswith("(")].set_index("kernel")["us_per_step"]
        busy = totals.get("(device busy: total)", float("nan"))
        wall = totals.get("(wall, profiled)", float("nan"))
        kinds = ", ".join(f"{k[len('(device busy: '):-1]} {v:.0f} us" for k, v in totals.items()
                          if k.startswith("(device busy: ") and k != "(device busy: total)")
        lines.append(f"- {what}, per step: wall {wall:.0f} us, device busy {busy:.0f} us ({kinds}); "
                     f"device idle {wall - busy:.0f} us; weight-read floor {roofline_ms * 1e3:.0f} us")
    return lines


def target_speculative(frames: dict) -> list[str]:
    """Efficiency (measured / ideal speedup) >= 0.9 at every (alpha, gamma), and what explains the misses."""
    spec, latency = frames.get("speculative"), frames.get("latency")
    if spec is None:
        return ["## target: speculative efficiency >= 0.90: not measured"]
    lines = [f"## target: speculative efficiency >= 0.90 at every (alpha, gamma): "
             f"{verdict(bool((spec['efficiency'] >= 0.9).all()))} (min {spec['efficiency'].min():.3f})",
             "The ideal assumes a verification of gamma + 1 tokens costs one AR step and nothing else costs "
             "time. `cost-aware` puts the measured verification cost t(gamma+1) / t(1) and the realized "
             "alpha into it; what it leaves is host overhead and the draft's sampling kernels.", "",
             "| alpha | gamma | efficiency | realized alpha | t(g+1)/t(1) | efficiency vs cost-aware ideal |",
             "|---|---|---|---|---|---|"]
    if latency is not None:
        target = latency[latency["shape"] == TARGET].set_index("k")["graph_ms"]
        for row in spec.itertuples():
            ratio = target.get(row.gamma + 1, float("nan")) / target.get(1, float("nan"))
            a, g = row.realized_alpha, row.gamma
            tokens = g + 1 if a == 1 else (1 - a ** (g + 1)) / (1 - a)
            aware = tokens / (g * row.c + ratio)
            lines.append(f"| {row.alpha} | {g} | {row.efficiency:.3f} | {a:.3f} | {ratio:.3f} | "
                         f"{row.speedup / aware:.3f} |")
    return lines


def target_verifier(frames: dict) -> list[str]:
    """The fused verifier: <= 20 us per call at gamma = 8 and >= 3x faster than the reference."""
    ver = frames.get("verifier")
    if ver is None:
        return ["## target: verifier <= 20 us at gamma 8, >= 3x the reference: not measured"]
    at8 = ver[ver["gamma"] == 8].pivot_table(index="mode", columns="impl", values="us_per_call")
    lines = ["## target: verifier <= 20 us per call at gamma = 8, >= 3x faster than the reference"]
    for mode, row in at8.iterrows():
        fast, ref = row.get("triton", float("nan")), row.get("reference", float("nan"))
        kernel = ver[(ver["gamma"] == 8) & (ver["mode"] == mode) & (ver["impl"] == "triton")]
        graphed = kernel["us_kernel_in_graph"] if "us_kernel_in_graph" in kernel else pd.Series(dtype=float)
        kernel_us = graphed.iloc[0] if len(graphed) else float("nan")
        lines.append(f"- {mode}: {verdict(fast <= 20 and ref / fast >= 3)}: {fast:.1f} us per call "
                     f"(kernel alone in a graph: {kernel_us:.1f} us), reference {ref:.1f} us "
                     f"({ref / fast:.1f}x)")
    return lines


def figures(out: Path) -> None:
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
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=130)
        plt.close(fig)


def plot_ar(frame: pd.DataFrame, plt):
    shapes = list(dict.fromkeys(frame["shape"]))
    fig, axes = plt.subplots(1, len(shapes), figsize=(5.5 * len(shapes), 4), squeeze=False)
    for ax, shape in zip(axes[0], shapes, strict=True):
        data = frame[frame["shape"] == shape]
        data = data.pivot_table(index="prompt_tokens", columns="impl", values="tok_s")
        data.plot.bar(ax=ax, rot=0)
        roofline = frame.loc[frame["shape"] == shape, "roofline_tok_s"].iloc[0]
        ax.axhline(roofline, color="black", linestyle="--", label=f"roofline {roofline:.0f}")
        ax.axhline(0.9 * roofline, color="grey", linestyle=":", label="90% of roofline")
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
            ax.plot(part["gamma"], part["us_kernel_in_graph"], marker="x", linestyle=":",
                    label="triton, kernel only")
        ax.axhline(20, color="grey", linestyle=":", label="20 us target")
        ax.set(yscale="log", xlabel="gamma", ylabel="us per call", title=f"verifier, V = {VOCAB}, {mode}")
        ax.legend(fontsize=7)
    return fig


def plot_family(frame: pd.DataFrame, plt):
    fig, ax = plt.subplots(figsize=(9, 4))
    frame.pivot_table(index="run", columns="dataset", values="speedup").plot.bar(ax=ax, rot=45)
    ax.axhline(1, color="black", linewidth=0.8)
    ax.set(ylabel="speedup over AR", title="trained family", xlabel="")
    return fig


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("results/h100"), help="CSVs, figures, env.json")
    parser.add_argument("--quick", action="store_true", help="a smoke test: fewer points, fewer tokens")
    parser.add_argument("--sections", default="a,b,c,d,e", help="comma-separated subset of a,b,c,d,e")
    parser.add_argument("--deadline-s", type=float, default=500, help="skip steps that would end after this")
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--hf-eager-tokens", type=int, default=128, help="eager generate is slow: fewer")
    parser.add_argument("--models-dir", type=Path, default=Path("results/models"))
    parser.add_argument("--data-dir", type=Path, default=Path("flashspec/data"))  # the packaged prompt sets
    parser.add_argument("--family-prompts", type=int, default=10, help="prompts per dataset in section e")
    parser.add_argument("--family-tokens", type=int, default=128)
    parser.add_argument("--commit", default="", help="the commit measured (default: git rev-parse HEAD)")
    parser.add_argument("--report-only", type=Path, help="redo figures and summary.md from a folder's CSVs")
    args = parser.parse_args(argv)
    if args.report_only:
        report(args.report_only)
        return
    bad = set(args.sections.split(",")) - set("abcde")
    if bad:
        raise ValueError(f"--sections has {sorted(bad)}: use a comma-separated subset of a,b,c,d,e")
    if not torch.cuda.is_available():
        raise ValueError("bench_h100.py times CUDA graphs and kernels: run it on a machine with a CUDA GPU")
    # Each model here compiles its layer twice (one token, any other count): more than dynamo's default 8.
    torch._dynamo.config.cache_size_limit = 64
    Bench(args).run()


if __name__ == "__main__":
    main()
