"""EAGLE arm: the EAGLE head (flashspec/drafters/eagle.py) drafts a dynamic token tree, EAGLE-2 style.

The head keeps its own KV cache: one entry per committed position i < t (t = the pending token's
position), read from the target's real features f_i, which the engine hands over after every target
forward (`observe_target`). Drafting then grows a tree from the head's prediction at entry t - 1:

* depth 1: the top_k tokens of the head's distribution at the root;
* depth d + 1: the top_k nodes of depth d by cumulative score (the sum of the draft's log-probabilities
  along the path, i.e. the log of their product) are fed to the head, in one block under a tree mask, and
  each gets its top_k tokens as children;
* finally the gamma best nodes of the whole tree by cumulative score are kept (Li et al. 2024, EAGLE-2).
  A child's score never exceeds its parent's and ties go to the earlier node, so the kept set always
  contains each kept node's ancestors: it is a tree.

Siblings are the distinct top-k tokens, a deterministic function of the context, so the draft states no
distribution (`probs=None`): the tree verifier (flashspec/verify/tree.py) then samples without replacement
over the siblings, which is lossless. With top_k = 1 the arm drafts a chain and, when sampling, samples it
from the head's distribution and states it, as a standard speculative-sampling draft.

`model` may also be an EAGLE-1/2 head as its authors released it (flashspec/drafters/eagle.py reads it); it
drafts the same EAGLE-2 tree, which is the authors' `topK_genrate` (their `depth` + 1 = our depth, their
`total_token` - 1 = our gamma).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from flashspec.arms.base import Arm, Draft, TargetStates
from flashspec.config import ArmConfig, SamplingConfig
from flashspec.drafters.eagle import load_eagle, load_official_eagle
from flashspec.drafters.official import is_official
from flashspec.models.base import CausalLM, Scores
from flashspec.verify import process_logits, sample_from


class EagleArm(Arm):
    def __init__(
        self, head: nn.Module, embed: nn.Module, lm_head: Callable[[Tensor], Tensor], max_context: int,
        top_k: int = 4, depth: int = 6, name: str = "eagle",
    ) -> None:
        """`head`: an EagleHead (or a head with its forward, e.g. EAGLE-3's). `embed`, `lm_head`: the token
        embedding and the map from the head's outputs to the target's logits (the target's own, frozen)."""
        if top_k < 1 or depth < 1:
            raise ValueError(f"eagle top_k={top_k}, depth={depth}: both must be at least 1")
        self.head, self.embed, self.lm_head = head.eval(), embed, lm_head
        self.top_k, self.depth, self.name = top_k, depth, name
        self.tree = top_k > 1  # several children per node: token trees, which the target must verify
        cfg = head.config
        p = next(head.parameters())
        self.features = TargetStates(max_context, cfg.hidden_size, p.device, p.dtype)
        # Room for the committed entries plus the tree's: at most top_k fed nodes per depth.
        shape = (1, cfg.num_key_value_heads, max_context + depth * top_k, cfg.head_dim)
        self.keys = torch.zeros(shape, device=p.device, dtype=p.dtype)
        self.values = torch.zeros(shape, device=p.device, dtype=p.dtype)
        self.fed = 0  # head cache entries [0, fed) were computed from real features

    def begin(self, prompt: Tensor) -> None:
        self.features.known = self.fed = 0

    def observe_target(self, start: int, scores: Scores) -> None:
        self.features.write(start, self.target_features(scores))
        self.fed = min(self.fed, start)

    def target_features(self, scores: Scores) -> Tensor:
        """What the head reads of each committed position: EAGLE-1/2's is the target's last hidden state."""
        return scores.hidden

    @torch.inference_mode()
    def propose(self, context: Tensor, gamma: int, sampling: SamplingConfig, generator) -> Draft:
        t = len(context) - 1
        features = self.features.upto(t, self.name)
        # Re-feed at least the last entry: its output is the root the draft grows from.
        start, device = min(self.fed, t - 1), features.device
        # Made on the device: a CPU tensor's plain copy there would wait for the device to finish its queue.
        causal = torch.ones(t - start, t, dtype=torch.bool, device=device).tril(start)
        positions = torch.arange(start, t, device=device)
        root = self._run(features[start:t], context[start + 1 : t + 1], positions, start, causal)
        self.fed = t
        if self.top_k == 1:
            return self._chain(root[-1], t, gamma, sampling, generator)
        return self._tree(root[-1], t, gamma)

    def _run(self, features: Tensor, tokens: Tensor, positions: Tensor, slot: int, mask: Tensor) -> Tensor:
        """Head outputs [n, D] for a block written to cache slots [slot, slot + n); it sees the cache before
        `slot` and itself as `mask` [n, slot + n] says (positions and mask on the head's device; tokens anywhere:
        the context's arrive from the host without waiting for the device)."""
        past = (self.keys[:, :, :slot], self.values[:, :, :slot])
        embeds = self.embed(tokens.to(features.device, non_blocking=True))
        out, k, v = self.head(features[None], embeds[None], positions[None], mask, past)
        self.keys[:, :, slot : slot + len(tokens)] = k
        self.values[:, :, slot : slot + len(tokens)] = v
        return out[0]

    def _chain(self, feature: Tensor, t: int, gamma: int, sampling: SamplingConfig, generator) -> Draft:
        tokens, probs = [], []
        for i in range(gamma):
            q = process_logits(self.lm_head(feature[None]), sampling)
            tokens.append(sample_from(q, torch.rand(1, device=q.device, generator=generator)))
            probs.append(q)
            if i < gamma - 1:  # the draft token's entry sits at position t + i, in cache slot t + i
                mask = torch.ones(1, t + i + 1, dtype=torch.bool, device=q.device)
                position = torch.full((1,), t + i, device=q.device)
                feature = self._run(feature[None], tokens[-1], position, t + i, mask)[0]
        return Draft(torch.cat(tokens), None if sampling.greedy else torch.cat(probs))

    def _tree(self, root: Tensor, t: int, gamma: int) -> Draft:
        k, device = self.top_k, root.device
        score, token = self._top(root[None])
        # Per node: token, parent (-1 = the pending token), cumulative score, the feature its entry reads.
        tokens, parents, scores, inputs = [token[0]], [torch.full((k,), -1, device=device)], [score[0]], [
            root.expand(k, -1)
        ]
        entry = torch.full((k,), -1, device=device)  # each node's tree entry in the head cache (-1: not fed)
        sees = torch.zeros(0, 0, dtype=torch.bool, device=device)  # tree entry i sees entry j
        level = torch.arange(k, device=device)  # the nodes of the deepest depth so far
        for d in range(1, min(self.depth, gamma)):
            all_scores, all_parents = torch.cat(scores), torch.cat(parents)
            grow = level[all_scores[level].topk(min(k, len(level))).indices]
            m, fed = len(grow), len(sees)
            # A new entry sees its parent's ancestry and itself; the root (parent -1) has no tree entry.
            parent = all_parents[grow]
            up = torch.where(parent >= 0, entry[parent.clamp(min=0)], -1)
            rows = (sees[up.clamp(min=0)] if fed else sees.new_zeros(m, 0)) & (up >= 0)[:, None]
            block = torch.cat([rows, torch.eye(m, dtype=torch.bool, device=device)], 1)
            sees = torch.cat([torch.cat([sees, sees.new_zeros(fed, m)], 1), block])
            entry[grow] = torch.arange(fed, fed + m, device=device)
            mask = torch.cat([torch.ones(m, t, dtype=torch.bool, device=device), block], 1)
            # Nodes of depth d sit at position t + d - 1 (a depth-1 node is the token after the pending one).
            out = self._run(torch.cat(inputs)[grow], torch.cat(tokens)[grow],
                            torch.full((m,), t + d - 1, device=device), t + fed, mask)
            child_score, child = self._top(out)
            level = torch.arange(len(all_scores), len(all_scores) + m * k, device=device)
            tokens.append(child.flatten())
            parents.append(grow.repeat_interleave(k))
            scores.append((all_scores[grow, None] + child_score).flatten())
            inputs.append(out.repeat_interleave(k, 0))
            entry = torch.cat([entry, torch.full((m * k,), -1, device=device)])
        return _best_subtree(torch.cat(tokens), torch.cat(parents), torch.cat(scores), gamma)

    def _top(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """Log-probabilities and ids of the top_k next tokens of each row of `features`."""
        return self.lm_head(features).float().log_softmax(-1).topk(self.top_k)


def _best_subtree(tokens: Tensor, parents: Tensor, scores: Tensor, n: int) -> Draft:
    """The n best nodes by score (ties: the earlier node), in their original parents-first order."""
    keep = scores.sort(descending=True, stable=True).indices[:n].sort().values
    new_index = torch.full((len(tokens) + 1,), -1, dtype=torch.long, device=tokens.device)
    new_index[keep] = torch.arange(len(keep), device=tokens.device)
    # parents of -1 index the extra last slot, which stays -1 (the pending token); one read back for both
    kept_tokens, kept_parents = torch.stack([tokens[keep], new_index[parents[keep]]]).cpu()
    return Draft(kept_tokens, None, kept_parents)


def tree_params(cfg: ArmConfig, target: CausalLM) -> tuple[int, int]:
    """(top_k, depth) of an EAGLE arm's params, checked against what the target can verify."""
    unknown = sorted(set(cfg.params) - {"top_k", "depth"})
    if unknown:
        raise ValueError(f"unknown {cfg.kind} params {unknown}: use top_k (children per node; 1 = a chain), depth")
    top_k, depth = int(cfg.params.get("top_k", 4)), int(cfg.params.get("depth", 6))
    if top_k > 1 and not target.supports_tree:
        raise ValueError(
            f"{cfg.kind} with top_k={top_k} drafts token trees, which {type(target).__name__} cannot verify: use "
            "a Llama-family target on target.backend auto or native, or params.top_k=1 for chain drafts"
        )
    return top_k, depth


def build_eagle(cfg: ArmConfig, target: CausalLM) -> EagleArm:
    """The arm for ArmConfig(kind="eagle", model=CHECKPOINT, params={"top_k": 4, "depth": 6}); CHECKPOINT is
    ours (scripts/train_drafters.py) or an EAGLE-1/2 head as released."""
    top_k, depth = tree_params(cfg, target)
    hf = target.model
    embed = hf.get_input_embeddings()
    if is_official(cfg.model, "eagle"):
        head, own_embed = load_official_eagle(cfg.model, hf.config)
        embed = embed if own_embed is None else own_embed.to(hf.device, hf.dtype)
    else:
        head = load_eagle(cfg.model, hf.config)
    head = head.to(device=hf.device, dtype=hf.dtype)
    return EagleArm(head, embed, hf.get_output_embeddings(), target.max_context, top_k, depth)
