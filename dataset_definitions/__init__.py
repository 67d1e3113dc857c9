"""Text sources, tokenizers, packing and caching, and the Dataset classes the trainer reads."""
