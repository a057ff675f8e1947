"""Prompt lookup: find the latest earlier occurrence of the context's last n tokens and propose what followed.

With `candidates` K > 1 the arm proposes what followed each of the K latest occurrences (of the longest n-gram
that occurs at all) whose continuations differ, merged into a token tree: a repetitive text often continues one
of its earlier continuations, not always the latest. Each branch is up to gamma tokens long, so the tree has at
most K * gamma nodes; when the continuations share one path the draft is a chain, as with K = 1.
"""

from __future__ import annotations

import torch
from torch import Tensor

from flashspec.arms.base import Arm, Draft
from flashspec.config import SamplingConfig


class PromptLookupArm(Arm):
    def __init__(self, ngram_max: int = 3, ngram_min: int = 1, candidates: int = 1) -> None:
        if not 1 <= ngram_min <= ngram_max:
            raise ValueError(f"prompt lookup needs 1 <= ngram_min <= ngram_max, got {ngram_min}, {ngram_max}")
        if candidates < 1:
            raise ValueError(f"prompt lookup candidates={candidates}: give 1 (a chain) or more (a token tree)")
        self.ngram_max, self.ngram_min, self.candidates = ngram_max, ngram_min, candidates
        self.tree = candidates > 1
        self.name = "prompt_lookup" if candidates == 1 else f"prompt_lookup:{candidates}"

    def propose(self, context: Tensor, gamma: int, sampling: SamplingConfig, generator) -> Draft:
        for n in range(min(self.ngram_max, len(context) - 1), self.ngram_min - 1, -1):
            # Windows that end before the last token, so something follows each match.
            windows = context[:-1].unfold(0, n, 1)
            hits = (windows == context[-n:]).all(dim=1).nonzero()[:, 0]
            if len(hits):
                return self._draft(context, hits + n, gamma)
        return Draft(torch.empty(0, dtype=torch.long))

    def _draft(self, context: Tensor, starts: Tensor, gamma: int) -> Draft:
        """What follows the latest of `starts` (ascending), or the trie of what follows the `candidates` latest
        distinct ones (only a tree reads more than the last start)."""
        if self.candidates == 1:
            start = int(starts[-1])
            return Draft(context[start : start + gamma].clone())
        continuations: list[list[int]] = []
        for start in starts.flip(0).tolist():
            following = context[start : start + gamma].tolist()
            if not any(seen[: len(following)] == following for seen in continuations):  # not a prefix of one
                continuations.append(following)
                if len(continuations) == self.candidates:
                    break
        return trie(continuations)


def trie(paths: list[list[int]]) -> Draft:
    """The token tree of `paths` (shared prefixes merged, nodes parents-first, siblings distinct); a chain
    (no parents) when it does not branch."""
    tokens: list[int] = []
    parents: list[int] = []
    nodes: dict[tuple[int, int], int] = {}  # (parent, token) -> node
    for path in paths:
        parent = -1
        for token in path:
            if (parent, token) not in nodes:
                nodes[parent, token] = len(tokens)
                tokens.append(token)
                parents.append(parent)
            parent = nodes[parent, token]
    ids = torch.tensor(tokens, dtype=torch.long)
    if parents == list(range(-1, len(tokens) - 1)):
        return Draft(ids)
    return Draft(ids, None, torch.tensor(parents, dtype=torch.long))
