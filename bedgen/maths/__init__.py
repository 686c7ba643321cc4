"""Layer 2: the mathematics of diffusion and score models, as plain tensor functions (no networks, no files)."""
