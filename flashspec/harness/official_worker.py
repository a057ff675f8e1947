"""Decode with the authors' own code (PyPI eagle-llm 1.2.1, medusa-llm 0.1), for the harness's
`method=eagle_official` / `medusa_official` (flashspec/harness/decoders.py, OfficialDecoder).

Their code needs transformers 4.x (under 5.x both fail building their Llama: `KeyError: 'type'` in
`_init_rope`, docs/baselines.md), so this file runs in their own environment, under that environment's
Python, and imports nothing of flashspec. Protocol: one JSON request per stdin line, {"ids": [...],
"max_new_tokens": n}; one JSON reply per stdout line, {"ids": [new tokens], "seconds": decoding time}.

    python official_worker.py --code eagle|medusa --target DIR --drafter DIR [--device cpu] [--dtype float32]
        [--args JSON]   # keyword arguments of their eagenerate / medusa_generate (e.g. medusa_choices)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import transformers


def tokenizer_loader(target: str):
    """Their models load the target's tokenizer by AutoTokenizer; a tokenizer saved by transformers 5 names a
    class 4.x lacks, so fall back to its tokenizer.json (the ids are what matter here)."""

    def load(path: str = target, *args, **kwargs):
        try:
            return transformers.AutoTokenizer.from_pretrained(path, *args, **kwargs)
        except ValueError:
            with open(os.path.join(path, "tokenizer_config.json")) as f:
                config = json.load(f)
            special = {k: config[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token") if config.get(k)}
            return transformers.PreTrainedTokenizerFast(tokenizer_file=os.path.join(path, "tokenizer.json"), **special)

    return type("Loader", (), {"from_pretrained": staticmethod(load)})


def base_kwargs(target: str, dtype: torch.dtype) -> dict:
    """from_pretrained arguments; a config saved by transformers 5 keeps rope_theta in rope_parameters."""
    with open(os.path.join(target, "config.json")) as f:
        config = json.load(f)
    kwargs = {"torch_dtype": dtype}
    rope = config.get("rope_parameters") or {}
    if "rope_theta" not in config and "rope_theta" in rope:
        kwargs["rope_theta"] = rope["rope_theta"]
    if rope.get("rope_type", "default") != "default":
        sys.exit(f"official_worker: the target's RoPE {rope['rope_type']!r} is not read by their code")
    return kwargs


class IdRecorder:
    """medusa_generate yields decoded text only: this tokenizer stand-in keeps the ids it is asked to decode."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.ids = tokenizer, []

    def decode(self, ids, *args, **kwargs) -> str:
        self.ids = [int(i) for i in ids]
        return ""

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


def eagle(args, dtype: torch.dtype):
    from eagle.model import ea_model

    ea_model.AutoTokenizer = tokenizer_loader(args.target)
    model = ea_model.EaModel.from_pretrained(base_model_path=args.target, ea_model_path=args.drafter,
                                             **base_kwargs(args.target, dtype)).to(args.device).eval()

    def generate(ids: torch.Tensor, max_new_tokens: int) -> list[int]:
        out = model.eagenerate(ids, temperature=0.0, max_new_tokens=max_new_tokens, **args.args)
        return out[0, ids.shape[1]:].tolist()

    return generate


def medusa(args, dtype: torch.dtype):
    from medusa.model import medusa_model

    medusa_model.AutoTokenizer = tokenizer_loader(args.target)
    config = medusa_model.MedusaConfig.from_pretrained(args.drafter)
    # Their MedusaModel.from_pretrained, with the base model at --target (not the path the export recorded).
    base = medusa_model.KVLlamaForCausalLM.from_pretrained(args.target, **base_kwargs(args.target, dtype))
    model = medusa_model.MedusaModel(base, config.medusa_num_heads, config.medusa_num_layers, args.target)
    state = torch.load(os.path.join(args.drafter, "medusa_lm_head.pt"), map_location="cpu", weights_only=True)
    model.medusa_head.load_state_dict(state, strict=False)
    model = model.to(args.device).eval()
    model.tokenizer = recorder = IdRecorder(model.tokenizer)

    def generate(ids: torch.Tensor, max_new_tokens: int) -> list[int]:
        recorder.ids = []
        for _ in model.medusa_generate(ids, temperature=0.0, max_steps=max_new_tokens, **args.args):
            if len(recorder.ids) >= max_new_tokens:
                break
        return recorder.ids

    return generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--code", choices=("eagle", "medusa"), required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--drafter", required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--args", type=json.loads, default={})
    args = parser.parse_args()
    generate = (eagle if args.code == "eagle" else medusa)(args, getattr(torch, args.dtype))
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        ids = torch.tensor([request["ids"]], device=args.device)
        sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
        sync()
        start = time.perf_counter()
        with torch.inference_mode():
            new = generate(ids, request["max_new_tokens"])
        sync()
        print(json.dumps({"ids": new[: request["max_new_tokens"]], "seconds": time.perf_counter() - start}),
              flush=True)


if __name__ == "__main__":
    main()
