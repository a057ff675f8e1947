"""lm-evaluation-harness model `flashspec`: lm-eval's tasks, decoded by the speculative engine.

    python -m flashspec.quality.lm_eval_adapter --model flashspec \\
        --model_args target=family bandit=ucb1 gamma=4 --device cuda --tasks gsm8k --limit 100
    flashspec-lm-eval ...                     # the same, as the installed console script

The arguments are lm_eval's own (this runs lm_eval's CLI once the model is registered). lm-eval 0.4 finds
models only in its own registry, so a bare `lm_eval --model flashspec` cannot see this one; in Python,
`import flashspec.quality.lm_eval_adapter` first, then `lm_eval.simple_evaluate(model="flashspec", ...)`.

`--model_args` are run.py's overrides (conf/): `target=family`, `target=hf target.model=<path>
draft_model=<path>`, `arms=lookup_draft`, `bandit=none` (plain autoregressive decoding), `gamma=4`,
`sampling=temp1`, ... (lists as JSON: `--model_args '{"gamma": [2, 4]}'``). `--device cuda...` selects
`hardware=cuda` (bfloat16) and that device; `--device cpu`, `hardware=cpu`. Requests are decoded one at a
time (batch size 1, as the engine does). `generate_until` runs the engine; `loglikelihood` and
`loglikelihood_rolling` score with the target alone (drafts cannot change a likelihood).
"""

from __future__ import annotations

import json
import logging

import lm_eval.models  # noqa: F401  (registers lm-eval's own models: ours must not hide them)
import torch
from hydra.errors import HydraException
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import model_registry
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from tqdm.auto import tqdm

from flashspec.config import SamplingConfig
from flashspec.engine import SpeculativeEngine
from flashspec.harness import schema

log = logging.getLogger("lm_eval.flashspec")  # under lm-eval's logger: its CLI shows only those
NAME, TARGET = "flashspec", "flashspec.quality.lm_eval_adapter:FlashSpecLM"
SAMPLING_KEYS = {"until", "max_gen_toks", "do_sample", "temperature", "top_k", "top_p"}


class FlashSpecLM(TemplateLM):
    def __init__(self, batch_size: int | str = 1, max_batch_size: int | None = None,
                 device: str | None = None, max_gen_toks: int = 256, **overrides) -> None:
        super().__init__()
        cfg = run_config(device, overrides)
        self.engine = SpeculativeEngine(schema.engine_config(cfg))
        self.tokenizer = self.engine.tokenizer
        self._device = self.engine.device
        self.sampling, self.max_gen_toks = cfg.sampling, max_gen_toks
        self.label = " ".join(f"{k}={v}" for k, v in overrides.items()) or "defaults"
        if str(batch_size) not in ("1", "auto"):
            log.info("flashspec decodes one request at a time; batch_size=%s is ignored", batch_size)

    # ---------------------------------------------------------------- tokens
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.eot_token_id

    @property
    def max_length(self) -> int:
        return self.engine.target.max_context

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        """With the tokenizer's special tokens (as the engine encodes a prompt) unless told otherwise or the
        text already starts with BOS (a chat template put it there)."""
        if add_special_tokens is None:
            bos = self.tokenizer.bos_token
            add_special_tokens = not (bos and string.startswith(bos))
        return self.tokenizer.encode(string, add_special_tokens=add_special_tokens)

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.name_or_path.replace("/", "__")

    def apply_chat_template(self, chat_history: list[dict], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(
            chat_history, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    # ---------------------------------------------------------------- scoring with the target
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kw) -> list[tuple[float, bool]]:
        out = []
        for key, context, continuation in tqdm(requests, desc="loglikelihood", disable=disable_tqdm):
            score = self.score(context, continuation)
            self.cache_hook.add_partial("loglikelihood", key, score)
            out.append(score)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Each document in windows of the full context, every token predicted once (lm-eval's scheme)."""
        out = []
        for request in tqdm(requests, desc="loglikelihood_rolling", disable=disable_tqdm):
            (text,) = request.args
            tokens = self.tok_encode(text, add_special_tokens=False)
            windows = get_rolling_token_windows(tokens, self.prefix_token_id, self.max_length, context_len=1)
            total = sum(self.score(*make_disjoint_window(w))[0] for w in windows)
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
            out.append(total)
        return out

    @torch.inference_mode()
    def score(self, context: list[int], continuation: list[int]) -> tuple[float, bool]:
        """log P(continuation | context) under the target, and whether greedy decoding would produce it."""
        if not continuation:
            raise ValueError("an empty continuation has no likelihood: check the task's doc_to_target")
        ids = (context + continuation)[-(self.max_length + 1):]  # the longest context that fits
        target = self.engine.target
        target.reset()
        logits = target.forward(torch.tensor(ids[:-1], device=self._device)).logits[-len(continuation):]
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        wanted = torch.tensor(continuation, device=logprobs.device)
        picked = logprobs.gather(-1, wanted[:, None]).sum()
        return float(picked), bool((logprobs.argmax(-1) == wanted).all())

    # ---------------------------------------------------------------- generation with the engine
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out, steps, new, drafted, accepted = [], 0, 0, 0, 0
        for request in tqdm(requests, desc="generate_until", disable=disable_tqdm):
            context, gen_kwargs = request.args
            sampling, until, max_new = self.generation_settings(gen_kwargs)
            # Left-truncated to leave room for the answer, as lm-eval's HF model does.
            ids = self.tok_encode(context)[-(self.max_length - max_new):]
            result = self.engine.generate(ids, max_new_tokens=max_new, sampling=sampling, stop=until)
            self.cache_hook.add_partial("generate_until", request.args, result.text)
            out.append(result.text)
            steps, new = steps + result.steps, new + result.new_tokens
            drafted += sum(a.drafted for a in result.arms.values())
            accepted += sum(a.accepted for a in result.arms.values())
        alpha = f"{accepted / drafted:.3f}" if drafted else "n/a"
        log.info("flashspec (%s): %d requests, %d new tokens, tau %.2f tokens per target step, alpha %s",
                 self.label, len(requests), new, new / max(steps, 1), alpha)
        return out

    def generation_settings(self, gen_kwargs: dict) -> tuple[SamplingConfig, list[str], int]:
        unknown = sorted(set(gen_kwargs) - SAMPLING_KEYS)
        if unknown:
            raise ValueError(f"generation_kwargs {unknown} are not supported by flashspec: use only "
                             f"{sorted(SAMPLING_KEYS)} (set them in the task's YAML or --gen_kwargs)")
        until = gen_kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        max_new = int(gen_kwargs.get("max_gen_toks", self.max_gen_toks))
        base = self.sampling
        temperature = float(gen_kwargs.get("temperature", base.temperature))
        if gen_kwargs.get("do_sample") is False:
            temperature = 0.0  # lm-eval's way of asking for greedy decoding
        sampling = SamplingConfig(temperature=temperature, top_k=int(gen_kwargs.get("top_k", base.top_k)),
                                  top_p=float(gen_kwargs.get("top_p", base.top_p)), seed=base.seed)
        return sampling, until, max_new


def run_config(device: str | None, overrides: dict) -> schema.RunConfig:
    """run.py's config for `--model_args` (Hydra overrides) and lm-eval's `--device`."""
    args = device_overrides(device) + [f"{key}={override_value(value)}" for key, value in overrides.items()]
    try:
        cfg: schema.RunConfig = OmegaConf.to_object(schema.compose(*args))
    except (HydraException, OmegaConfBaseException) as err:
        raise ValueError(f"--model_args {' '.join(args)}: not a valid run.py configuration; use conf/ keys "
                         f"such as target=..., arms=..., bandit=..., gamma=... ({err})") from err
    schema.check(cfg)
    if cfg.method.backend != "flashspec":
        raise ValueError(f"method={cfg.method.name} is transformers' generate (lm_eval --model hf runs it); "
                         "this adapter decodes with flashspec's engine: leave method unset")
    return cfg


def device_overrides(device: str | None) -> list[str]:
    """lm-eval passes `cuda:0` unless told otherwise: honoured only where CUDA exists, so CPU runs work."""
    if not device:
        return []
    if device.startswith("cuda"):
        if torch.cuda.is_available():
            return ["hardware=cuda", f"target.device={device}"]
        log.warning("--device %s: CUDA is not available, decoding on the CPU (hardware=cpu)", device)
        return []
    return ["hardware=cpu", f"target.device={device}"] if device == "cpu" else [f"target.device={device}"]


def override_value(value) -> str:
    """A Hydra override value from lm-eval's parsed model arg (it turned "4" into 4, "true" into True)."""
    return json.dumps(value) if isinstance(value, bool | list | dict) or value is None else str(value)


def register() -> None:
    """Make `flashspec` known to lm-eval's registry (lazily: the class loads when a run asks for it)."""
    if NAME not in model_registry:
        # By module path, not this class object: under `python -m` this file runs as __main__.
        model_registry.register(NAME, target=TARGET)


def main() -> None:
    """lm_eval's command line, with `--model flashspec` available."""
    from lm_eval.__main__ import cli_evaluate

    register()
    cli_evaluate()


register()

if __name__ == "__main__":
    main()
