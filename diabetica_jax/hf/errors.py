"""Errors raised while reading or writing Hugging Face checkpoint directories (config.json + safetensors)."""


from diabetica_jax.errors import UserError


class HFCheckpointError(UserError, ValueError):
    """A checkpoint that cannot be loaded; the message names the file and, where one is at fault, the tensor."""
