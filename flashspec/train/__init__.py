"""Training: the project's own model family (corpus, tokenizer, family) and the learned draft heads."""
