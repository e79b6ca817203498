"""Training: one loop over a device mesh with exact resume."""
