"""Stage 2, augmentation: random transforms as Keras layers on keras.ops, and their registry."""
