"""Data: batch sources for training and their assembly into global (multi-host) arrays."""
