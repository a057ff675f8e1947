"""What the sections share: the options, the output folder, the deadline, the models built so far."""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch
from transformers import LlamaForCausalLM

from flashspec.bench.shapes import CONTEXT, SHAPES, prompt_ids, random_llama
from flashspec.models.native import NativeLlama
from flashspec.models.tiny import tiny_tokenizer

START = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - START:7.1f}s] {msg}", flush=True)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.out = args, args.out
        self.out.mkdir(parents=True, exist_ok=True)
        self.quick = args.quick
        self.new = 64 if args.quick else args.new_tokens
        self.tokenizer = tiny_tokenizer()  # ids only: nothing is decoded to text that matters
        self.hf: dict[str, LlamaForCausalLM] = {}  # untouched modules for Hugging Face's generate
        self.native: dict[str, NativeLlama] = {}  # ours, on their own copy of the same weights
        self.ours: dict[tuple[str, int], list[int]] = {}  # AR tokens, to compare with generate's
        self.step_ms: dict[str, float] = {}  # graph replay of one token, per shape
        self.skipped: list[str] = []
        self.env: dict = {}

    def left(self) -> float:
        return self.args.deadline_s - (time.perf_counter() - START)

    def enough(self, seconds: float, what: str) -> bool:
        if self.left() >= seconds:
            return True
        log(f"SKIPPED {what}: {self.left():.0f} s left of --deadline-s, it needs about {seconds:.0f}")
        self.skipped.append(what)
        return False

    def save(self, rows: list[dict], name: str) -> pd.DataFrame:
        """The section's CSV, every row naming the device it ran on."""
        frame = pd.DataFrame(rows)
        frame.insert(0, "device", self.env.get("device", "?"))
        frame.to_csv(self.out / f"{name}.csv", index=False)
        log(f"wrote {name}.csv\n{frame.drop(columns='device').to_string(max_cols=14)}")
        return frame

    def shapes(self) -> list[str]:
        """The random-weight shapes, in the order the sections time them."""
        return list(SHAPES)

    def prompt(self, shape: str, n: int) -> torch.Tensor:
        return prompt_ids(n, self.hf[shape].config.vocab_size)

    def model(self, shape: str) -> NativeLlama:
        if shape not in self.native:
            t0 = time.perf_counter()
            self.hf[shape] = random_llama(shape)
            self.native[shape] = NativeLlama(random_llama(shape), CONTEXT, graphs=True)
            log(f"built {shape} twice (ours, Hugging Face's) in {time.perf_counter() - t0:.1f} s")
        return self.native[shape]
