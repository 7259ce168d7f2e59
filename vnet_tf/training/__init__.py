"""Stage 5, training: the input pipeline, optimiser, time budget and the training loop."""
