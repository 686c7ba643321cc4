"""Layer 10: the bedgen command line."""
