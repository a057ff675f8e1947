"""Trained drafters that live on the target's own features: the EAGLE head and Speculative Streaming."""
