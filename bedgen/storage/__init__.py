"""Layer 5: what lies on disk: checkpoints in diffusers layout, run folders, the model registry."""
