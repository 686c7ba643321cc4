"""Layer 4: reading and preparing training images (folders, LSUN LMDB, Hugging Face datasets, prepared shards)."""
