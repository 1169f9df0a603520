"""Errors raised while reading or writing Hugging Face checkpoint directories (config.json + safetensors)."""


class HFCheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and, where one is at fault, the tensor."""
