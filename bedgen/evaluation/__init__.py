"""Layer 7: measuring samples: FID/KID/IS with reference statistics, LPIPS nearest neighbours."""
