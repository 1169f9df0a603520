"""Errors raised while reading or writing Hugging Face checkpoints."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and, where one is at fault, the tensor."""
