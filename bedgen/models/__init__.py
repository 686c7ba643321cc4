"""Layer 3: the networks: the denoising UNet, the autoencoders, LPIPS and Inception feature networks."""
