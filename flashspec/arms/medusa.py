"""Medusa arm: the heads of flashspec/drafters/medusa.py draft a static sparse token tree from one state.

The engine hands the arm the target's last hidden state of every committed position (`observe_target`).
With t the pending token's position, h_{t-1} produced the pending token through the target's own head, and
Medusa head d reads it to guess the token at t + d: depth d of the tree. The tree is the checkpoint's
sparse tree; the engine's gamma is the number of nodes, a prefix of it (parents come first).

Siblings when sampling, two ways (ArmConfig.params["siblings"]; greedy decoding always takes "top_k"):
* "sample" (default): every node is an independent draw from its head's processed distribution q_d,
  stated as the node's probs: siblings i.i.d. with replacement from one q, the condition under which the
  tree verifier's recursive rejection sampling is lossless (flashspec/verify/tree.py). With heads that are
  roughly calibrated this accepts more than top-k (measured on the family's target at T = 1).
* "top_k": node (r_1..r_d) is the rank-r_d token of head d: distinct siblings, a deterministic draft
  (`probs=None`), lossless through the tree verifier's sampling without replacement.

`model` may also be Medusa-1 heads as their authors released them (ResBlockHeads, flashspec/drafters/medusa.py):
they draft the tree their config names (`medusa_choices`), else Medusa's default mc_sim_7b_63.
"""

from __future__ import annotations

import torch
from torch import Tensor

from flashspec.arms.base import Arm, Draft, TargetStates
from flashspec.config import ArmConfig, SamplingConfig
from flashspec.drafters.medusa import MedusaHeads, ResBlockHeads, load_medusa, load_official_medusa, tree_tensors
from flashspec.drafters.official import is_official
from flashspec.models.base import CausalLM, Scores
from flashspec.verify import process_logits, sample_from

SIBLINGS = ("top_k", "sample")


class MedusaArm(Arm):
    tree = True

    def __init__(
        self, heads: MedusaHeads | ResBlockHeads, paths: list[tuple[int, ...]], max_context: int,
        siblings: str = "sample", name: str = "medusa",
    ) -> None:
        if siblings not in SIBLINGS:
            raise ValueError(f"medusa siblings={siblings!r}: use one of {SIBLINGS}")
        self.parents, depth, rank = tree_tensors(paths)
        if int(depth.max()) > heads.n_heads:
            raise ValueError(f"the medusa tree is {int(depth.max())} deep, but has {heads.n_heads} heads")
        self.heads, self.siblings, self.name = heads.eval(), siblings, name
        device = heads.block_weight.device
        self.depth, self.rank = depth.to(device), rank.to(device)
        width, dtype = heads.block_weight.shape[-1], heads.block_weight.dtype
        self.states = TargetStates(max_context, width, device, dtype)

    def begin(self, prompt: Tensor) -> None:
        self.states.known = 0

    def observe_target(self, start: int, scores: Scores) -> None:
        self.states.write(start, scores.hidden)

    @torch.inference_mode()
    def propose(self, context: Tensor, gamma: int, sampling: SamplingConfig, generator) -> Draft:
        t = len(context) - 1
        last = self.states.upto(t, self.name)[t - 1]
        n = min(gamma, len(self.parents))
        depth, rank = self.depth[:n], self.rank[:n]
        logits = self.heads(last, heads=int(depth.max()))  # [K, V]
        if sampling.greedy or self.siblings == "top_k":
            top = logits.topk(int(rank.max()) + 1, dim=-1).indices
            return Draft(top[depth - 1, rank], None, self.parents[:n])
        probs = process_logits(logits, sampling)[depth - 1]
        u = torch.rand(n, device=probs.device, generator=generator)
        return Draft(sample_from(probs, u), probs, self.parents[:n])


def build_medusa(cfg: ArmConfig, target: CausalLM) -> MedusaArm:
    hf = getattr(target, "model", None)
    if hf is None:
        raise ValueError("the medusa arm reads the target's Hugging Face module: use a loaded model target")
    lm_head = hf.get_output_embeddings().weight
    load = load_official_medusa if is_official(cfg.model, "medusa") else load_medusa
    heads, paths = load(cfg.model, hf.config, lm_head)
    unknown = set(cfg.params) - {"siblings"}
    if unknown:
        raise ValueError(f"unknown medusa params {sorted(unknown)}: the only one is 'siblings' ({SIBLINGS})")
    return MedusaArm(heads, paths, target.max_context, cfg.params.get("siblings", "sample"))
