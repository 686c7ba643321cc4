"""Layer 1: the configuration schema, the presets and typed overrides (CLI, sweeps and app alike)."""
