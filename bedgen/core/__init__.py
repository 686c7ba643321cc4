"""Layer 0: what every other layer uses: errors, device placement, images, atomic file I/O, input checks, state files, Hub references."""
