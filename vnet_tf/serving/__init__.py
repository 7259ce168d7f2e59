"""Stage 5, serving: the SavedModel's signatures, export, and the TF Serving client."""
