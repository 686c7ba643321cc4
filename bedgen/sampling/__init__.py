"""Layer 6: turning a network into images: schedulers, the denoiser, the pipeline and interpolation."""
