"""Stage 4, inference: the one whole-volume graph (Segmenter) and what loads and runs it."""
