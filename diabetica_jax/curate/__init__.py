"""Curation: collect heterogeneous diabetes text, filter it, augment it with a teacher, refine it by
self-distillation, and write shards, rejects and a data card."""
