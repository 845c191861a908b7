"""Reusable models built from mlable's layers: ``ByteDecoder``, the byte-level language model of the demo."""

from mlable_keras.models.byte_decoder import ByteDecoder, decode_tokens, encode_tokens

__all__ = ["ByteDecoder", "decode_tokens", "encode_tokens"]
