"""Output quality next to speed: HumanEval pass@1 (sandboxed), and an lm-evaluation-harness model adapter."""
