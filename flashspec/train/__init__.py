"""Training the project's own model family: corpus, tokenizer, Llama target and drafts."""
