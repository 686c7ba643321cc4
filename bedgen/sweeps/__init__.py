"""Layer 9: grids and random searches of training runs, and their reports."""
