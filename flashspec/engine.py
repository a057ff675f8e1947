"""The engine loop: bandit picks an arm -> the arm drafts -> the target scores the draft in one forward ->
the verifier accepts a prefix and adds one token of its own -> the caches roll back to what was kept.

The target's cache always holds the committed context except its last token (the "pending" token), which
opens the next verification block, so every step is exactly one target forward over 1 + gamma tokens.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, replace
from pathlib import Path

import torch
from torch import Tensor
from transformers import PreTrainedModel

from flashspec.arms import Arm, Draft, build_arm
from flashspec.bandit import SELECTORS, make_selector
from flashspec.bandit.cost import CostModel
from flashspec.bandit.reward import begin_request, step_reward
from flashspec.benchmark import BenchmarkResult, benchmark, memory_report
from flashspec.config import FlashSpecConfig, SamplingConfig
from flashspec.deploy import streaming_setup
from flashspec.metrics import ArmStats, EngineMetrics, GenerationResult
from flashspec.models import CausalLM, Scores, load_model
from flashspec.models.fidelity import apply_per_row, check_rope, eos_token_ids, logits_processors
from flashspec.verify import (
    matched_length,
    process_logits,
    sample_from,
    verify_reference,
    verify_tree_reference,
    verify_tree_triton,
    verify_triton,
)

AR_CHUNK = 32  # most steps without a draft decoded between two reads of their tokens
NO_DRAFT = Draft(torch.empty(0, dtype=torch.long))
PENDING_PARENT = torch.tensor([-1])  # a tree block's first node, the pending token, hangs off the cache


class SpeculativeEngine:
    def __init__(
        self, config: FlashSpecConfig | None = None, *, target: CausalLM | None = None, tokenizer=None,
        arms: Sequence[Arm] | None = None, **unknown,
    ) -> None:
        """`target` with its `tokenizer`, and `arms`: parts already built, used instead of loading
        `config.target.model` and building `config.arms` (so one loaded model serves several engines)."""
        if unknown or not isinstance(config, FlashSpecConfig | None):
            got = sorted(unknown) or f"a {type(config).__name__}"
            raise TypeError(f"SpeculativeEngine() takes a FlashSpecConfig (got {got}): for a transformers model "
                            "object, as in SpecStream, use SpeculativeEngine.from_model(model, tokenizer, gamma=4)")
        self.config = cfg = config or FlashSpecConfig()
        if (target is None) != (tokenizer is None):
            raise ValueError("pass `target` and `tokenizer` together, or neither (config.target then loads)")
        if target is None:
            target, tokenizer = load_model(cfg.target.model, cfg.target)
        self.target, self.tokenizer = target, tokenizer
        self.device = torch.device(cfg.target.device)
        if cfg.bandit.policy not in (*SELECTORS, "none"):
            valid = ", ".join([*SELECTORS, "none"])
            raise ValueError(f"unknown bandit policy {cfg.bandit.policy!r}: use one of {valid}")
        speculative = cfg.bandit.policy != "none"
        if arms is None:
            arms = [build_arm(a, target, tokenizer, cfg.target) for a in cfg.arms] if speculative else []
        arms = list(arms) if speculative else []
        check_tree_support(target, arms)
        if arms and target.rollback_problem:
            raise ValueError(f"cannot speculate with {type(target).__name__}: {target.rollback_problem}; "
                             "use bandit.policy=none (autoregressive)")
        # Every (arm, gamma) pair is one arm of the bandit, so the bandit can pick gamma too.
        self.pairs: list[tuple[Arm, int]] = [(arm, int(g)) for arm in arms for g in cfg.gammas]
        # Arms that draft from the target's states hear of every target forward.
        self.listeners = [arm for arm in arms if type(arm).observe_target is not Arm.observe_target]
        multi_gamma = len(cfg.gammas) > 1
        self.arm_names = [f"{arm.name}@{g}" if multi_gamma else arm.name for arm, g in self.pairs]
        self.selector = None
        if speculative:
            params = {"arm": cfg.bandit.arm} if cfg.bandit.policy == "fixed" else dict(cfg.bandit.params)
            self.selector = make_selector(cfg.bandit.policy, len(self.pairs), seed=cfg.sampling.seed, **params)
        # reward=cost_model: the table its rewards read: bandit.costs if that file exists, else measured at the
        # first request (begin_request, which writes it there, so the runs after it read the same table)
        costs = Path(cfg.bandit.costs) if speculative and cfg.bandit.costs else None
        self.costs = CostModel.load(costs, self.arm_names) if costs and costs.is_file() else None
        self.verify = pick_verifier(cfg.verifier, self.device)
        self.verify_tree = pick_verifier(cfg.verifier, self.device, tree=True)
        # What the target's own `generate` does besides its forward: stop at its EOS ids, process its logits.
        model = getattr(self.target, "model", None)
        if model is not None and not self.target.per_token_rope:
            check_rope(model.config, self.target.max_context)
        self.eos_ids = eos_token_ids(self.tokenizer, model)
        self.processors = logits_processors(getattr(model, "generation_config", None), self.device)
        self.best_rate = 0.0  # tokens/s normaliser that maps the throughput reward into [0, 1]
        self.failed: set[int] = set()  # pairs whose arm raised while drafting this request: they sit it out
        self.metrics = EngineMetrics()
        self.ar_chunk = AR_CHUNK  # 0: decode without drafts one synchronised step at a time, as speculative steps
        self._baseline: SpeculativeEngine | None = None

    @classmethod
    def from_model(
        cls, model: PreTrainedModel, tokenizer, gamma: int = 4, max_speculation_depth: int = 5,
        temperature: float = 0.7, device: str = "auto", *, drafter: str | Path | None = None,
        train_preset: str | None = None, acceptance_threshold: float | None = None,
    ) -> SpeculativeEngine:
        """The SpecStream package's entry point: Speculative Streaming over a transformers model object (moved
        to `device`; "auto": CUDA when available). Its stream embeddings and LoRA come from `drafter`, a
        checkpoint of scripts/train_drafters.py, by default the one trained for this model (found beside it or
        in results/models); with `train_preset` a missing one is trained first, into `drafter` or beside the
        model's folder. Drafts are chains of min(gamma, max_speculation_depth) tokens; `acceptance_threshold`
        is refused: see flashspec/deploy.py."""
        config, target = streaming_setup(model, gamma, max_speculation_depth, temperature, device, drafter,
                                         train_preset, acceptance_threshold)
        return cls(config, target=target, tokenizer=tokenizer)

    def benchmark(self, test_prompts: Sequence, num_runs: int = 3, **kwargs) -> BenchmarkResult:
        """Speedup over autoregressive decoding, tokens/s, acceptance rate, memory: see flashspec/benchmark.py."""
        return benchmark(self, test_prompts, num_runs, **kwargs)

    def get_metrics(self) -> dict:
        """Totals and rates over this engine's generations (EngineMetrics.as_dict), per-arm statistics, the
        bandit's state and the drafting arms' memory (flashspec/benchmark.py's MemoryReport, in bytes)."""
        memory = memory_report(self)
        return {**self.metrics.as_dict(), "bandit": self.selector.state() if self.selector else None,
                "memory_overhead": memory.overhead_bytes, "memory": asdict(memory)}

    def autoregressive(self) -> SpeculativeEngine:
        """This engine's target decoding without drafts (made once): what speedups are measured against."""
        if self._baseline is None:
            cfg = self.config
            self._baseline = type(self)(replace(cfg, bandit=replace(cfg.bandit, policy="none")),
                                        target=self.target, tokenizer=self.tokenizer)
        return self._baseline

    def generate(
        self,
        prompt: str | Sequence[int] | Tensor,
        max_new_tokens: int = 128,
        sampling: SamplingConfig | None = None,
        stop: Sequence[str] | None = None,
        *,
        temperature: float | None = None,
        measure_speedup: bool = False,
    ) -> GenerationResult:
        """`temperature` replaces the sampling config's. `measure_speedup` costs a second decode: the same
        target then decodes the same prompt autoregressively, and `result.speedup` is the ratio of the two
        tokens/s (one measurement, no warm-up: `benchmark` is the careful one)."""
        sampling = sampling or self.config.sampling
        if temperature is not None:
            sampling = replace(sampling, temperature=temperature)
        self.failed = set()
        begin_request(self)
        result = self._generate(prompt, max_new_tokens, sampling, stop)
        if measure_speedup:
            baseline = self.autoregressive().generate(prompt, max_new_tokens, sampling, stop)
            result.speedup = result.tokens_per_s / baseline.tokens_per_s
        self.metrics.add(result)
        return result

    # ---------------------------------------------------------------- the loop
    def _generate(
        self, prompt: str | Sequence[int] | Tensor, max_new_tokens: int, sampling: SamplingConfig,
        stop: Sequence[str] | None,
    ) -> GenerationResult:
        context = self._encode(prompt, max_new_tokens)
        generator = torch.Generator(self.device).manual_seed(sampling.seed)
        stats = {name: ArmStats() for name in self.arm_names}
        trace: list[int] = []
        emitted: list[int] = []
        start = time.perf_counter()
        self.target.reset()
        for arm, _ in self.pairs:
            arm.begin(context)
        scores = self.target.forward(context.to(self.device))
        self._observe_target(0, scores)
        first = self._sample(scores.logits[-1:], context, sampling, generator)
        ttft = time.perf_counter() - start
        prompt_tokens, new = len(context), [first]
        committed = HostContext(context, max_new_tokens)
        committed.append(new)
        step_tokens = [first]
        # Decoding without drafts needs no token on the host until the output may end: read back once a chunk.
        chunks = self._autoregressive(committed.view(), max_new_tokens - 1, sampling, generator) \
            if self.selector is None and not self.processors and self.ar_chunk > 0 else None
        while not self._finished(new, step_tokens, max_new_tokens, stop):
            k = self.selector.select() if self.selector is not None else -1
            if chunks is not None:
                step_tokens = [next(chunks)]
            else:
                step_tokens = self._step(committed.view(), k, max_new_tokens - len(new), sampling, generator, stats)
            committed.append(step_tokens)
            new += step_tokens
            trace.append(k)
            emitted.append(len(step_tokens))
        if chunks is not None:  # the chunk may have decoded past the end: the cache keeps what the output kept
            self.target.crop(prompt_tokens + len(new) - 1)
        new = self._truncate(new, max_new_tokens, stop, len(new) - (emitted[-1] if emitted else len(new)))
        if emitted:  # only the last step can commit past the end (the loop checks after every step)
            emitted[-1] -= 1 + sum(emitted) - len(new)
        return GenerationResult(
            text=self._text(new, stop), token_ids=new, prompt_tokens=prompt_tokens,
            steps=1 + len(trace), arms=stats, trace=trace, wall_time_s=time.perf_counter() - start,
            ttft_s=ttft, emitted=emitted, failed_arms=sorted({self.arm_names[k] for k in self.failed}),
        )

    def _step(
        self, context: Tensor, k: int, budget: int, sampling: SamplingConfig, generator, stats: dict
    ) -> list[int]:
        """One target forward; returns the tokens it commits (accepted drafts + one of the target's own)."""
        t0 = time.perf_counter()
        room = min(budget - 1, self.target.max_context - len(context))
        draft = NO_DRAFT
        if k >= 0 and room > 0:
            draft = self._propose(k, context, min(self.pairs[k][1], room), sampling, generator)
        cached = self.target.length
        # Host-to-device copies that do not wait for the device: nothing before the read below does.
        pending, drafted = context[-1:], draft.tokens
        block = torch.cat([pending.to(self.device, non_blocking=True), drafted.to(self.device, non_blocking=True)])
        tree = draft.parents is not None and len(draft) > 0
        # A tree block: the pending token hangs off the cache (-1), the draft's roots off the pending token.
        parents = torch.cat([PENDING_PARENT, draft.parents + 1]) if tree else None
        scores = self.target.forward(block, parents)
        logits = self._process(scores.logits, context, block, parents)
        rows = None  # the block rows of the committed tokens: a prefix for a chain, else the tree's path
        if tree:
            n_accepted, tokens, rows = self._verify_tree(logits, draft, sampling, generator)
        else:
            n_accepted, tokens = self._verify(logits, draft, sampling, generator)
        finite = torch.isfinite(scores.logits).all().view(1)
        # The step's only host-device synchronisation: how many were accepted, and which tokens.
        n, *tokens, ok = torch.cat([n_accepted.view(1), tokens.view(-1), finite.long()]).tolist()
        check_finite(ok)
        kept = scores.rows(self._commit(cached, n, rows))
        if k >= 0:  # before the arms hear of this forward: Hedge's would-be drafts start from this step's context
            self._learn(k, context, draft, n, tokens[: n + 1], time.perf_counter() - t0, sampling, generator, stats)
        self._observe_target(cached, kept)
        return tokens[: n + 1]

    def _autoregressive(self, context: Tensor, budget: int, sampling: SamplingConfig, generator) -> Iterator[int]:
        """The tokens of up to `budget` steps without a draft, one per step. Each step's input is the token the
        last one sampled, still on the device, so the steps launch back to back; their tokens are read back
        once per chunk (of 4, then doubling up to AR_CHUNK steps). The uniforms are drawn step by step as
        `_step` draws them, so the output is `_step`'s to the bit. The target's cache holds every launched
        step: the caller crops it to what it kept."""
        token, size = context[-1:].to(self.device, non_blocking=True), min(4, self.ar_chunk)
        while budget > 0:
            n, tokens, finite = min(size, budget), [], []
            for _ in range(n):
                scores = self.target.forward(token)
                _, sampled = self._verify(scores.logits, NO_DRAFT, sampling, generator)
                finite.append(torch.isfinite(scores.logits).all().view(1))
                # A new tensor: the verifier's output buffer is the next call's. Non-finite logits may sample
                # any id; the read-back below raises before it is kept.
                token = sampled.clamp(0, self.target.vocab_size - 1)
                tokens.append(token)
            values = torch.cat(tokens + finite).tolist()  # the chunk's only host-device synchronisation
            for value, ok in zip(values[:n], values[n:], strict=True):
                check_finite(ok)
                yield value
            budget, size = budget - n, min(2 * size, self.ar_chunk)

    def _propose(self, k: int, context: Tensor, gamma: int, sampling: SamplingConfig, generator) -> Draft:
        """Pair k's draft. An arm that raises sits out the rest of the request, with a warning: its steps
        decode without a draft (the output stays the target's) and earn the bandit nothing."""
        arm = self.pairs[k][0]
        if k not in self.failed:
            try:
                return arm.propose(context, gamma, sampling, generator)
            except Exception as err:  # any drafter bug: losing its drafts costs speed, never correctness
                self.failed |= {j for j, (a, _) in enumerate(self.pairs) if a is arm}
                warnings.warn(f"arm {arm.name!r} raised while drafting ({type(err).__name__}: {err}); it sits out "
                              "the rest of this request, whose steps it would have drafted decode without a draft",
                              RuntimeWarning, stacklevel=2)
        return NO_DRAFT

    def _verify(self, logits: Tensor, draft: Draft, sampling: SamplingConfig, generator) -> tuple[Tensor, Tensor]:
        """One verifier call, no host sync. Without a draft (an autoregressive step) it samples the target's
        own token from p, as `sample_from(process_logits(...))` would, with the same uniform: one fused kernel
        on the GPU instead of a chain of small ones."""
        u = torch.rand(1, len(draft) + 1, device=self.device, generator=generator)
        probs = None if draft.probs is None else draft.probs[None].to(self.device, non_blocking=True)
        tokens = draft.tokens[None].to(self.device, non_blocking=True)
        n, tokens = self.verify(logits[None], tokens, probs, sampling, u)
        return n[0], tokens[0]

    def _verify_tree(
        self, logits: Tensor, draft: Draft, sampling: SamplingConfig, generator
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Verify a token tree: n_accepted, tokens (as for a chain) and the block rows of the committed tokens
        (the pending token's, then the accepted path's)."""
        u = torch.rand(len(draft) + 1, device=self.device, generator=generator)
        probs = None if draft.probs is None else draft.probs.to(self.device, non_blocking=True)
        tokens = draft.tokens.to(self.device, non_blocking=True)
        n, path, tokens = self.verify_tree(logits, tokens, draft.parents, probs, sampling, u)
        return n, tokens, torch.cat([path.new_zeros(1), path + 1])

    def _commit(self, cached: int, n: int, rows: Tensor | None) -> slice | Tensor:
        """Roll the target's cache back to the pending token and the n accepted drafts; returns their rows."""
        if rows is None:
            self.target.crop(cached + 1 + n)
            return slice(0, n + 1)
        self.target.keep_path(cached, rows[: n + 1])
        return rows[: n + 1]

    def _process(self, logits: Tensor, context: Tensor, block: Tensor, parents: Tensor | None = None) -> Tensor:
        """The generation_config's logits processors, each row with its own context (lossless: the target's
        distribution at every position is the processed one, as in `generate`)."""
        return apply_per_row(self.processors, logits, context, block, parents)

    def _observe_target(self, start: int, kept: Scores) -> None:
        for arm in self.listeners:
            arm.observe_target(start, kept)

    # ---------------------------------------------------------------- bandit feedback
    def _learn(
        self, k: int, context: Tensor, draft: Draft, n: int, kept: list[int], seconds: float,
        sampling: SamplingConfig, generator, stats: dict,
    ) -> None:
        arm, _ = self.pairs[k]
        if k not in self.failed:
            arm.observe(context, draft, n)
        s = stats[self.arm_names[k]]
        s.pulls, s.drafted, s.accepted = s.pulls + 1, s.drafted + len(draft), s.accepted + n
        if self.selector.full_information:
            rewards = self._would_be_rewards(k, context, kept, len(draft), seconds, sampling, generator)
            self.selector.update_all(rewards)
        else:
            self.selector.update(k, 0.0 if k in self.failed else step_reward(self, k, n + 1, len(draft), seconds))

    def _would_be_rewards(
        self, k: int, context: Tensor, kept: list[int], drafted: int, seconds: float, sampling: SamplingConfig,
        generator,
    ) -> list[float]:
        """Full information (Hedge): score every arm's draft against the verified tokens, no extra target call.

        The other arms' drafts cost their own drafting time (measured); the target time is shared."""
        rewards = []
        for j, (_, gamma) in enumerate(self.pairs):
            if j == k:
                rewards.append(0.0 if k in self.failed else step_reward(self, k, len(kept), drafted, seconds))
                continue
            t0 = time.perf_counter()
            draft = self._propose(j, context, gamma, sampling, generator)
            if j in self.failed:
                rewards.append(0.0)
                continue
            matched = matched_length(draft.tokens, draft.parents, kept)
            emitted = min(matched, len(kept) - 1) + 1
            rewards.append(step_reward(self, j, emitted, len(draft), seconds + time.perf_counter() - t0))
        return rewards

    # ---------------------------------------------------------------- input and output
    def _encode(self, prompt: str | Sequence[int] | Tensor, max_new_tokens: int) -> Tensor:
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens}: ask for at least one new token")
        ids = self.tokenizer(prompt)["input_ids"] if isinstance(prompt, str) else prompt
        ids = torch.as_tensor(ids, dtype=torch.long).flatten().cpu()
        if len(ids) == 0:
            raise ValueError("empty prompt: pass a non-empty string or at least one token id")
        limit = self.target.max_context
        if len(ids) + max_new_tokens > limit:
            raise ValueError(
                f"prompt of {len(ids)} tokens + max_new_tokens={max_new_tokens} exceeds the context of {limit} "
                "tokens: shorten the prompt, lower max_new_tokens or raise target.max_context"
            )
        if int(ids.max()) >= self.target.vocab_size or int(ids.min()) < 0:
            raise ValueError(f"prompt has token ids outside the vocabulary [0, {self.target.vocab_size})")
        return ids

    def _sample(self, logits: Tensor, context: Tensor, sampling: SamplingConfig, generator) -> int:
        """The first new token, from the logits of the prompt's last token."""
        if not torch.isfinite(logits).all():
            raise ValueError("non-finite logits from the target on the prompt: check its weights and dtype")
        u = torch.rand(1, device=self.device, generator=generator)
        return int(sample_from(process_logits(self._process(logits, context, context[-1:]), sampling), u))

    def _finished(self, new: list[int], last: list[int], max_new_tokens: int, stop: Sequence[str] | None) -> bool:
        """`last`: the tokens the last step added (earlier ones held no EOS), so the check costs the same at
        every step however long the output grows."""
        if len(new) >= max_new_tokens or not self.eos_ids.isdisjoint(last):
            return True
        return bool(stop) and any(s in self.tokenizer.decode(new) for s in stop)

    def _truncate(self, new: list[int], max_new_tokens: int, stop: Sequence[str] | None, since: int) -> list[int]:
        """A step may commit past the budget, an EOS or a stop string; drop what follows each. Like `generate`'s
        stopping criteria, keep the EOS and the token that completes a stop string. The first `since` tokens
        (before the last step) held no stop string."""
        new = new[:max_new_tokens]
        ends = [i for i, t in enumerate(new) if t in self.eos_ids]
        new = new[: ends[0] + 1] if ends else new
        for end in range(since + 1, len(new) + 1) if stop else ():
            if any(s in self.tokenizer.decode(new[:end]) for s in stop):
                return new[:end]
        return new

    def _text(self, new: list[int], stop: Sequence[str] | None) -> str:
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        cuts = [text.find(s) for s in stop or () if s in text]
        return text[: min(cuts)] if cuts else text


class HostContext:
    """The committed tokens on the host, in a buffer allocated once per request: `view()` is the context
    without a copy per step. Committed tokens never change, so a view handed out stays right."""

    def __init__(self, prompt: Tensor, max_new_tokens: int) -> None:
        self.ids = torch.empty(len(prompt) + max_new_tokens, dtype=torch.long)
        self.ids[: len(prompt)] = prompt
        self.length = len(prompt)

    def append(self, tokens: list[int]) -> None:
        end = self.length + len(tokens)
        if end > len(self.ids):  # a last step that committed past the budget (the output is cut after the loop)
            self.ids = torch.cat([self.ids, torch.empty(end - len(self.ids), dtype=torch.long)])
        self.ids.numpy()[self.length : end] = tokens  # numpy writes a list without building a tensor
        self.length = end

    def view(self) -> Tensor:
        return self.ids[: self.length]


def check_finite(ok: int) -> None:
    if not ok:
        raise ValueError(
            "non-finite logits from the target: check its weights and dtype (float16 often overflows; "
            "use bfloat16 or float32)"
        )


def pick_verifier(name: str, device: torch.device, tree: bool = False):
    """The fused Triton kernel on CUDA, the PyTorch reference elsewhere, unless the config insists; `tree`:
    the token-tree verifier (flashspec/verify/tree.py) instead of the chain's."""
    choices = {"reference": verify_tree_reference if tree else verify_reference,
               "triton": verify_tree_triton if tree else verify_triton}
    if name == "auto":
        return choices["triton" if device.type == "cuda" else "reference"]
    if name not in choices:
        raise ValueError(f"verifier={name!r}: use auto, reference or triton")
    return choices[name]


def check_tree_support(target: CausalLM, arms: Sequence[Arm]) -> None:
    trees = [arm.name for arm in arms if arm.tree]
    if trees and not target.supports_tree:
        raise ValueError(
            f"arms {trees} draft token trees, which the {type(target).__name__} target cannot verify: use "
            "target.backend=native (Llama-family targets) or arms that draft chains"
        )
