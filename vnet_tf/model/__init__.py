"""Stage 3, the model: V-Net, its losses and deep supervision, its weights' storage and average."""
