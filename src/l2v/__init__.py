"""l2v: turn any decoder-only language model into a text encoder (LLM2Vec)."""

__version__ = "0.1.0"

from .encoder import LLM2Vec, Encoder, EncoderConfig, encode, load  # noqa: E402
from .errors import L2VError  # noqa: E402

__all__ = ["Encoder", "LLM2Vec", "EncoderConfig", "encode", "load", "L2VError", "__version__"]
