"""Hypothesis strategies of the project's own tests: the argument cases of each op.

The generic strategies (shapes, divisors, text, logits, caches, chunkings) live
in the public ``mlable_core.testing``, which users import too; this module only
builds the cases of this library's ops from them. Sizes stay small so that a
property runs in milliseconds and TensorFlow tracing, not data, dominates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st

from mlable_core import testing
from mlable_core.testing import SPECIAL_CHARACTERS, divisors  # noqa: F401  (re-exported for the tests)


def shapes(min_rank: int = 1, max_rank: int = 5, min_side: int = 1, max_side: int = 6) -> st.SearchStrategy[tuple[int, ...]]:
    """Shapes of rank in ``[min_rank, max_rank]`` with sides in ``[min_side, max_side]`` (``mlable_core.testing.shapes``)."""
    return testing.shapes(min_rank=min_rank, max_rank=max_rank, min_side=min_side, max_side=max_side)


def signed_axis(draw: st.DrawFn, axis: int, rank: int) -> int:
    """``axis`` or its negative alias, at random."""
    return axis - rank if draw(st.booleans()) else axis


@dataclass(frozen=True)
class DivideCase:
    """One valid ``divide`` call: the input shape, the normalized and the as-given axes."""

    shape: tuple[int, ...]
    input_axis: int
    output_axis: int
    factor: int
    insert: bool
    given_input_axis: int
    given_output_axis: int


@st.composite
def divide_cases(draw: st.DrawFn, max_rank: int = 5) -> DivideCase:
    """A shape with a valid (input_axis, output_axis, factor, insert) for ``divide``, any pair of axes."""
    insert = draw(st.booleans())
    shape = draw(shapes(min_rank=1 if insert else 2, max_rank=max_rank - int(insert)))
    out_rank = len(shape) + int(insert)
    output_axis = draw(st.integers(0, out_rank - 1))
    input_axis = draw(st.integers(0, out_rank - 1).filter(lambda axis: axis != output_axis))
    expanded = list(shape)
    if insert:
        expanded.insert(output_axis, 1)
    factor = draw(st.sampled_from(divisors(expanded[input_axis])))
    return DivideCase(
        shape=shape,
        input_axis=input_axis,
        output_axis=output_axis,
        factor=factor,
        insert=insert,
        given_input_axis=signed_axis(draw, input_axis, out_rank),
        given_output_axis=signed_axis(draw, output_axis, out_rank),
    )


@st.composite
def merge_cases(draw: st.DrawFn, max_rank: int = 5) -> tuple[tuple[int, ...], int, int, bool]:
    """A shape of rank >= 2 with two distinct axes and a ``left`` flag for ``merge``."""
    shape = draw(shapes(min_rank=2, max_rank=max_rank))
    left_axis = draw(st.integers(0, len(shape) - 1))
    right_axis = draw(st.integers(0, len(shape) - 1).filter(lambda axis: axis != left_axis))
    return shape, left_axis, right_axis, draw(st.booleans())


def arange(shape: tuple[int, ...], dtype: str = "float32") -> np.ndarray:
    """Distinct values laid out in C order, so that any misplaced element shows."""
    return np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape)


@dataclass(frozen=True)
class GroupCase:
    """A group-accuracy setting: the shape of the values, the grouped axis (normalized and as given), the group."""

    shape: tuple[int, ...]
    axis: int
    given_axis: int
    group: int
    seed: int


@st.composite
def group_cases(draw: st.DrawFn, max_rank: int = 3, max_group: int = 4, max_groups: int = 3) -> GroupCase:
    """Values of rank 1 to ``max_rank`` whose ``axis`` holds a whole number of groups of ``group``."""
    shape = list(draw(shapes(min_rank=1, max_rank=max_rank, max_side=4)))
    axis = draw(st.integers(0, len(shape) - 1))
    group = draw(st.integers(1, max_group))
    shape[axis] = group * draw(st.integers(1, max_groups))
    return GroupCase(tuple(shape), axis, signed_axis(draw, axis, len(shape)), group, draw(st.integers(0, 2**31 - 1)))

# text, Hilbert folding and sampling (issue 6) ---------------------------------------------------

def texts(min_size: int = 0, max_size: int = 12) -> st.SearchStrategy[str]:
    """Text without NUL (the padding character), astral characters included (``mlable_core.testing.utf8_texts``)."""
    return testing.utf8_texts(min_size=min_size, max_size=max_size)


@st.composite
def hilbert_cases(draw: st.DrawFn, max_points: int = 64, max_rank: int = 4) -> tuple[int, int, tuple[int, ...], int]:
    """``(order, rank, shape, axis)``: a small shape whose ``axis`` has length ``2 ** (order * rank)``."""
    rank = draw(st.integers(1, 3))
    order = draw(st.integers(1, max(1, (max_points.bit_length() - 1) // rank)))
    others = draw(shapes(min_rank=0, max_rank=max_rank - 1, max_side=3))
    axis = draw(st.integers(0, len(others)))
    shape = others[:axis] + (1 << (order * rank),) + others[axis:]
    return order, rank, shape, signed_axis(draw, axis, len(shape))


def logits(max_batch: int = 3, max_vocabulary: int = 12) -> st.SearchStrategy[np.ndarray]:
    """Float32 logits ``(B, V)`` in [-6, 6], some ``-inf``, at least one finite value per row (``mlable_core.testing.logits``)."""
    return testing.logits(st.tuples(st.integers(1, max_batch), st.integers(1, max_vocabulary)))


# cached attention (issue 4) ------------------------------------------------------------------


@dataclass(frozen=True)
class DecodeCase:
    """A sequence decoded through a cache in chunks: sizes, chunk lengths, and the cache length."""

    batch: int
    heads: int
    head_dim: int
    length: int
    slots: int
    chunks: tuple[int, ...]


def chunk_sizes(draw: st.DrawFn, length: int) -> tuple[int, ...]:
    """A random split of ``length`` positions into consecutive non-empty chunks (one chunk included)."""
    return draw(testing.chunk_sizes(length, min_chunks=1))


@st.composite
def decode_cases(draw: st.DrawFn, max_length: int = 8, max_extra_slots: int = 4) -> DecodeCase:
    """Small attention shapes and a chunking of the sequence for cached decoding."""
    length = draw(st.integers(1, max_length))
    return DecodeCase(
        batch=draw(st.integers(1, 3)),
        heads=draw(st.integers(1, 3)),
        head_dim=draw(st.integers(1, 5)),
        length=length,
        slots=length + draw(st.integers(0, max_extra_slots)),
        chunks=chunk_sizes(draw, length),
    )

@dataclass(frozen=True)
class RotaryCase:
    """One valid ``rotate`` call: the input shape, normalized and as-given axes, and the options."""

    shape: tuple[int, ...]
    sequence_axis: int
    feature_axis: int
    given_sequence_axis: int
    given_feature_axis: int
    offset: int
    interleaved: bool
    max_wavelength: float
    scaling_factor: float


@st.composite
def rotary_cases(draw: st.DrawFn, max_rank: int = 4, max_side: int = 4, max_features: int = 9) -> RotaryCase:
    """A shape with distinct sequence and feature axes (any order, odd feature sizes included) and RoPE options."""
    shape = list(draw(shapes(min_rank=2, max_rank=max_rank, max_side=max_side)))
    rank = len(shape)
    sequence_axis = draw(st.integers(0, rank - 1))
    feature_axis = draw(st.integers(0, rank - 1).filter(lambda axis: axis != sequence_axis))
    shape[feature_axis] = draw(st.integers(1, max_features))
    return RotaryCase(
        shape=tuple(shape),
        sequence_axis=sequence_axis,
        feature_axis=feature_axis,
        given_sequence_axis=signed_axis(draw, sequence_axis, rank),
        given_feature_axis=signed_axis(draw, feature_axis, rank),
        offset=draw(st.integers(-8, 64)),
        interleaved=draw(st.booleans()),
        max_wavelength=draw(st.sampled_from([10_000, 500.0, 1e6])),
        scaling_factor=draw(st.sampled_from([1.0, 0.5, 4.0])),
    )


@st.composite
def token_cases(draw: st.DrawFn, max_rank: int = 4) -> tuple[tuple[int, ...], int, int]:
    """``(indices shape (..., S / T, T), V, E)`` for the byte-embedding combination."""
    shape = draw(shapes(min_rank=2, max_rank=max_rank, min_side=1, max_side=5))
    return shape, draw(st.integers(1, 300)), draw(st.integers(1, 6))


# chunked attention (issue 12) -------------------------------------------------------------------

# the broadcastable forms of a user mask (B, T, S): which of its three axes have their full size
MASK_FORMS = (None, (True, True, True), (True, False, True), (False, True, True), (True, True, False), (False, False, True))


@dataclass(frozen=True)
class AttentionCase:
    """Plain attention on projected tensors: sizes, grouped heads, masks, and the block sizes of a chunked run."""

    batch: int
    queries: int
    keys: int
    kv_heads: int
    groups: int
    head_dim: int
    value_dim: int
    causal: bool
    window: int | None
    mask_form: tuple[bool, bool, bool] | None
    query_chunk: int
    key_chunk: int
    seed: int

    @property
    def heads(self) -> int:
        return self.kv_heads * self.groups

    @property
    def mask_shape(self) -> tuple[int, int, int] | None:
        if self.mask_form is None:
            return None
        return tuple(size if full else 1 for size, full in zip((self.batch, self.queries, self.keys), self.mask_form))


@st.composite
def attention_cases(draw: st.DrawFn, max_length: int = 9, max_chunk: int = 6) -> AttentionCase:
    """Small attention shapes (grouped-query heads, ``T != S``, ``Hv != H``), any masks, any block sizes."""
    return AttentionCase(
        batch=draw(st.integers(1, 2)),
        queries=draw(st.integers(1, max_length)),
        keys=draw(st.integers(1, max_length)),
        kv_heads=draw(st.integers(1, 2)),
        groups=draw(st.integers(1, 3)),
        head_dim=draw(st.integers(1, 4)),
        value_dim=draw(st.integers(1, 4)),
        causal=draw(st.booleans()),
        window=draw(st.one_of(st.none(), st.integers(1, 4))),
        mask_form=draw(st.sampled_from(MASK_FORMS)),
        query_chunk=draw(st.integers(1, max_chunk)),
        key_chunk=draw(st.integers(1, max_chunk)),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


# dynamic patching (issue 16) -------------------------------------------------------------------

# bytes for the patch criteria: spaces often, so that the space rule fires, and UTF-8 continuation bytes
BYTE_ALPHABET = [32, 32, 10, 0, 97, 98, 99, 0x80, 0xA9, 200, 255]


@st.composite
def patch_inputs(draw: st.DrawFn, max_rows: int = 3, max_length: int = 20):
    """``(bytes, entropies, mask or None, max_patch_length or None, threshold)`` for the patch criteria, ``(B, S)`` each."""
    rows = draw(st.integers(1, max_rows))
    length = draw(st.integers(0, max_length))
    data = np.asarray(draw(st.lists(st.sampled_from(BYTE_ALPHABET), min_size=rows * length, max_size=rows * length)), np.int32).reshape(rows, length)
    entropies = np.asarray(
        draw(st.lists(st.sampled_from([0.0, 0.5, 1.0, 1.5, 2.0, 3.0]), min_size=rows * length, max_size=rows * length)), np.float32
    ).reshape(rows, length)
    masked = draw(st.booleans())
    mask = np.asarray(draw(st.lists(st.booleans(), min_size=rows * length, max_size=rows * length)), bool).reshape(rows, length) if masked else None
    max_patch_length = draw(st.one_of(st.none(), st.integers(1, 5)))
    threshold = draw(st.sampled_from([-0.5, 0.0, 0.75, 1.0, 2.5]))
    return data, entropies, mask, max_patch_length, threshold


# generation: ragged batches and beams (issue 13) -------------------------------------------------


@dataclass(frozen=True)
class RaggedCase:
    """A batch of prompts of different lengths, a generation length and a seed for the data."""

    lengths: tuple[int, ...]
    max_new_tokens: int
    seed: int


@st.composite
def ragged_cases(
    draw: st.DrawFn, max_batch: int = 3, max_length: int = 6, max_new_tokens: int = 8, min_batch: int = 1
) -> RaggedCase:
    """Per-row prompt lengths in ``[1, max_length]`` (often different), ``1 <= M <= max_new_tokens``."""
    batch = draw(st.integers(min_batch, max_batch))
    return RaggedCase(
        lengths=tuple(draw(st.lists(st.integers(1, max_length), min_size=batch, max_size=batch))),
        max_new_tokens=draw(st.integers(1, max_new_tokens)),
        seed=draw(st.integers(0, 2**16)),
    )
