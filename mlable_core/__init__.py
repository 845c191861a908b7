"""Pure TensorFlow ops for byte-level and hierarchical language models.

Nothing here imports Keras. Submodules are loaded on first access, so that
``import mlable_core.shapes`` stays free of TensorFlow:

- ``shapes``: shape arithmetic on tuples (no TensorFlow).
- ``reshaping``: divide, merge, swap and move axes.
- ``cache``: the key / value cache (create, write at a step, append, ring slots, overflow checks).
- ``attention``: attention masks, plain attention and attention over a cache (linear or ring).
- ``chunked``: attention over long sequences in bounded memory (blocks, online softmax, recomputed gradient).
- ``embedding``: byte-embedding combination (tokun): one gather, one reshape.
- ``rotary``: rotary position embedding (RoPE) tables and rotation.
- ``decoding``: the compiled generation loop (prefill, then one token per step, cache threaded through).
- ``accuracy``: group reductions, prediction decoders and per-group correctness.
- ``text``: UTF-32-BE byte codecs (encode, decode, trim, untrim).
- ``hilbert``: Hilbert curve points and indices, fold and unfold.
- ``sampling``: greedy, temperature, top-k, top-p and binary samplers.
- ``patching``: dynamic patch boundaries (entropy, monotonic, space, stride), pooling between bytes and patches, masks.
- ``hashing``: polynomial hashes of the byte n-grams ending at each position (hash n-gram embeddings).
- ``bits``: log2-likelihood sums and byte counts for bits per byte / per character.
- ``testing``: hypothesis strategies and checkers (cached decoding, relative positions) for users' own
  property-based suites (``pip install "mlable[test]"``); ``pytest_plugin`` registers its ``ci`` / ``dev``
  hypothesis profiles.

Every op works eagerly, inside ``tf.function`` and under ``jit_compile=True``,
but for the string codecs ``text.encode`` and ``text.decode`` (XLA has no strings).

Shape letters
-------------
One glossary for the whole project (``mlable_core`` and ``mlable_keras``):
every docstring and ``# (B, S, N, H)`` comment uses these letters, each with
one meaning.

===  =====================================================================
B    batch (rows)
S    sequence positions: bytes or tokens along the sequence axis; in
     attention the key / value positions, i.e. the cache slots (Keras'
     ``MultiHeadAttention``: key length ``S``)
T    query positions of one attention call (Keras: query length ``T``);
     with a cache, also the new keys / values written at ``step``
W    sliding window; a ring cache holds ``W`` slots
N    query heads
K    key / value heads (grouped-query attention; ``K`` divides ``N``)
H    head size
D    model width (features of the residual stream, the input of a layer)
E    embedding size of one byte (or of one hash bucket)
G    bytes per token (the token size); also the ``group`` of the
     group-accuracy metrics
V    rows of an embedding table (vocabulary)
C    classes scored by a head (256 byte values)
R    rotated features in RoPE (the feature size rounded down to even)
M    new tokens produced by a generation
P    patches (dynamic patching)
===  =====================================================================

Beams are spelled out (``num_beams``), not lettered.
"""

from __future__ import annotations

from mlable_core._lazy import submodule_getattr


__version__ = "0.21.0"


__getattr__ = submodule_getattr(__name__)
