"""Reusable models built from mlable's layers: ``ByteDecoder``, the byte-level language model of the demo, and
``PatchDecoder``, a two-level byte model over dynamic patches."""

from mlable_keras.models.byte_decoder import ByteDecoder, decode_tokens, encode_tokens
from mlable_keras.models.patch_decoder import PatchDecoder

__all__ = ["ByteDecoder", "PatchDecoder", "decode_tokens", "encode_tokens"]
