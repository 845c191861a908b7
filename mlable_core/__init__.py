"""Pure TensorFlow ops for byte-level and hierarchical language models.

Nothing here imports Keras. Submodules are loaded on first access, so that
``import mlable_core.shapes`` stays free of TensorFlow:

- ``shapes``: shape arithmetic on tuples (no TensorFlow).
- ``reshaping``: divide, merge, swap and move axes.
- ``attention``: key/value cache (create, update), attention masks, plain and cached attention.
- ``embedding``: byte-embedding combination (tokun): one gather, one reshape.
- ``rotary``: rotary position embedding (RoPE) tables and rotation.
- ``decoding``: the compiled generation loop (prefill, then one token per step, cache threaded through).
- ``accuracy``: group reductions, prediction decoders and per-group correctness.
- ``text``: UTF-32-BE byte codecs (encode, decode, trim, untrim).
- ``hilbert``: Hilbert curve points and indices, fold and unfold.
- ``sampling``: greedy, temperature, top-k, top-p and binary samplers.
- ``patching``: dynamic patch boundaries (entropy, monotonic, space, stride), pooling between bytes and patches, masks.
- ``hashing``: polynomial hashes of the byte n-grams ending at each position (hash n-gram embeddings).

Every op works eagerly, inside ``tf.function`` and under ``jit_compile=True``,
but for the string codecs ``text.encode`` and ``text.decode`` (XLA has no strings).
"""

from __future__ import annotations

from mlable_core._lazy import submodule_getattr


__version__ = "0.21.0"


__getattr__ = submodule_getattr(__name__)
