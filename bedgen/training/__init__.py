"""Layer 8: the one trainer for every family, in-training FID and fine-tuning."""
