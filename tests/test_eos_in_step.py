"""An EOS that a speculative step commits ends the output there, as it ends autoregressive decoding: inside an
accepted chain, on a tree's accepted path, as the bonus token and as the first token."""

import pytest
import torch

from flashspec import BanditConfig, FlashSpecConfig, SpeculativeEngine
from flashspec.arms import Arm, Draft, PromptLookupArm
from flashspec.models import CausalLM, Scores

V, EOS = 8, 5
# Greedy successor of each token: 0 -> 1 -> 2 -> EOS -> 3 -> 4 -> 0; 6 -> EOS; 7 -> 6.
SUCCESSOR = {0: 1, 1: 2, 2: EOS, EOS: 3, 3: 4, 4: 0, 6: EOS, 7: 6}


class SuccessorLM(CausalLM):
    """Greedy next token = SUCCESSOR[last]; scores token trees too (each row depends on its own token only)."""

    supports_tree = True

    def __init__(self) -> None:
        self.table = torch.zeros(V, V)
        for a, b in SUCCESSOR.items():
            self.table[a, b] = 5.0
        self.vocab_size, self.max_context, self.length = V, 64, 0

    def reset(self) -> None:
        self.length = 0

    def forward(self, tokens, parents=None) -> Scores:
        self.length += len(tokens)
        return Scores(self.table[tokens], torch.zeros(len(tokens), 1))

    def crop(self, length: int) -> None:
        self.length = min(length, self.length)

    def keep_path(self, start: int, nodes) -> None:
        self.length = start + len(nodes)


class EosTokenizer:
    eos_token_id = EOS

    def decode(self, ids, skip_special_tokens=False) -> str:
        return ""


class SuccessorTreeArm(Arm):
    """A tree whose first root is wrong and whose second root starts the target's greedy chain of depth 4."""

    name, tree = "successor_tree", True

    def propose(self, context, gamma, sampling, generator) -> Draft:
        chain, last = [], int(context[-1])
        for _ in range(4):
            last = SUCCESSOR.get(last, 0)
            chain.append(last)
        wrong = (chain[0] + 1) % V
        return Draft(torch.tensor([wrong, *chain]), parents=torch.tensor([-1, -1, 1, 2, 3]))


def engine(arm: Arm | None, gamma: int = 4) -> SpeculativeEngine:
    policy = "fixed" if arm else "none"
    return SpeculativeEngine(FlashSpecConfig(bandit=BanditConfig(policy), gammas=[gamma]), target=SuccessorLM(),
                             tokenizer=EosTokenizer(), arms=[arm] if arm else None)


@pytest.mark.parametrize(
    ("name", "arm", "gamma", "prompt", "expected"),
    [
        # Lookup drafts [2, EOS, 3, 4], all accepted, bonus 0: the step commits [2, EOS, 3, 4, 0].
        ("chain", PromptLookupArm(), 4, [0, 1, 2, EOS, 3, 4, 0], [1, 2, EOS]),
        # The tree's path 2 -> EOS -> 3 -> 4 is accepted past the EOS.
        ("tree", SuccessorTreeArm(), 4, [7, 0], [1, 2, EOS]),
        # Lookup drafts [2], accepted; the bonus token is the EOS.
        ("bonus", PromptLookupArm(), 1, [0, 1, 2, 3, 0], [1, 2, EOS]),
        # The prefill's token is the EOS: no step at all.
        ("first", PromptLookupArm(), 4, [7, 6, EOS, 3, 6], [EOS]),
    ],
)
def test_an_eos_committed_by_a_step_ends_the_output(name, arm, gamma, prompt, expected):
    autoregressive = engine(None).generate(prompt, 20)
    speculative = engine(arm, gamma).generate(prompt, 20)
    assert autoregressive.token_ids == expected
    assert speculative.token_ids == expected, name
    assert sum(speculative.emitted) + 1 == len(expected)
    if name != "first":
        assert speculative.arms[arm.name].accepted >= 1  # the EOS came out of a speculative step
