"""A testing toolkit for property-based regression suites on ``mlable_core`` ops.

Two kinds of tools, both free of Keras:

- Hypothesis strategies of small inputs: shapes (with unknown ``None`` dims),
  axes, divisors, finite float arrays, text with astral characters and its
  UTF-32-BE byte tokens, logits, boolean masks, key/value caches, positions,
  and the chunkings of a sequence for cached decoding.
  Sizes default to small values so that a property runs in milliseconds and
  TensorFlow tracing, not data, dominates.
- Checkers of invariants, each raising ``AssertionError`` whose message names
  the property, the input and the numbers:

  - ``check_cached_decoding``: decoding in chunks through a cache equals one
    full pass, and writing a position twice changes nothing;
  - ``check_relative_positions``: outputs depend on relative positions only
    (shifting every position leaves them unchanged) but do depend on them, the
    property RoPE gives attention scores.

The strategies need ``hypothesis`` (``pip install 'mlable[test]'``), which is
imported when a strategy is first built; the checkers need only numpy and
whatever the functions under test use.

Shape letters (the project's glossary): ``B`` batch, ``S`` sequence positions
(the cache slots of an attention cache), ``K`` key / value heads, ``H`` head
size, ``V`` vocabulary rows.

Example:
    >>> from hypothesis import given
    >>> from mlable_core import testing
    >>> @given(testing.float_arrays(testing.shapes(min_rank=2, max_rank=3)))
    ... def test_identity(x):
    ...     assert (x == x).all()
    >>> test_identity()
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

HYPOTHESIS_MESSAGE = "mlable_core.testing needs hypothesis: pip install 'mlable[test]'"

# characters that stress a byte codec: emoji (with skin tone and flag sequences), CJK, Hangul,
# combining marks after their base letter, and astral-plane letters (4 UTF-8 bytes each)
SPECIAL_CHARACTERS = "😀🎉👍🏽🇫🇷中文字漢語日本語한국어e\u0301a\u0308o\u0300\u20dd𝔘𝔫𝔦𐍈𠜎\U0010fffd"

ArrayFn = Callable[..., Any]


def _strategies(message: str = HYPOTHESIS_MESSAGE) -> Any:
    """``hypothesis.strategies``, or the ImportError that says how to install it."""
    try:
        from hypothesis import strategies
    except ImportError as error:
        raise ImportError(message) from error
    return strategies


def _as_strategy(value: Any) -> Any:
    """``value`` itself when it is a strategy, else a strategy that always gives it."""
    st = _strategies()
    return value if isinstance(value, st.SearchStrategy) else st.just(value)


def _check_size(value: object, name: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"`{name}` must be an int. Received: {name}={value!r}")
    if value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}. Received: {name}={value}")
    return int(value)


def _check_range(low: int, high: int, low_name: str, high_name: str) -> None:
    if low > high:
        raise ValueError(f"`{low_name}` must be <= `{high_name}`. Received: {low_name}={low}, {high_name}={high}")


def _to_numpy(value: Any) -> np.ndarray:
    """A numpy array from a numpy / TensorFlow / Keras value (bfloat16 and float16 read as float32)."""
    if hasattr(value, "numpy"):
        value = value.numpy()
    array = np.asarray(value)
    if array.dtype.kind == "V" or array.dtype.name in ("bfloat16", "float16"):
        array = array.astype(np.float32)
    return array


# strategies --------------------------------------------------------------------------------------


def shapes(
    min_rank: int = 1, max_rank: int = 4, min_side: int = 1, max_side: int = 6, none_probability: float = 0.0
) -> Any:
    """Shape tuples of rank in ``[min_rank, max_rank]``, sides in ``[min_side, max_side]``.

    Each dimension is ``None`` (unknown, as in ``keras.Input``) with probability
    ``none_probability``; the default gives concrete shapes only.

    Args:
        min_rank: the smallest rank, >= 0.
        max_rank: the largest rank, >= ``min_rank``.
        min_side: the smallest side, >= 0.
        max_side: the largest side, >= ``min_side``.
        none_probability: the chance that a dimension is ``None``, in ``[0, 1]``.

    Returns:
        A strategy of ``tuple[int | None, ...]``.

    Example:
        >>> shapes(min_rank=2, max_rank=3, none_probability=0.5).example()  # doctest: +SKIP
        (None, 4, 2)
    """
    st = _strategies()
    min_rank, max_rank = _check_size(min_rank, "min_rank"), _check_size(max_rank, "max_rank")
    min_side, max_side = _check_size(min_side, "min_side"), _check_size(max_side, "max_side")
    _check_range(min_rank, max_rank, "min_rank", "max_rank")
    _check_range(min_side, max_side, "min_side", "max_side")
    if isinstance(none_probability, bool) or not isinstance(none_probability, (int, float)) or not 0 <= none_probability <= 1:
        raise ValueError(f"`none_probability` must be a float in [0, 1]. Received: none_probability={none_probability!r}")
    side = st.integers(min_side, max_side)
    if none_probability == 0:
        return st.lists(side, min_size=min_rank, max_size=max_rank).map(tuple)
    if none_probability == 1:
        return st.lists(st.none(), min_size=min_rank, max_size=max_rank).map(tuple)
    # a uniform draw below the probability picks None; shrinking moves towards 0, hence towards None
    dimension = st.tuples(st.floats(0, 1, exclude_max=True), side).map(
        lambda pair: None if pair[0] < none_probability else pair[1]
    )
    return st.lists(dimension, min_size=min_rank, max_size=max_rank).map(tuple)


def axis_pairs(rank: int, signed: bool = False) -> Any:
    """Two distinct axes of a tensor of rank ``rank`` (>= 2), in any order.

    Args:
        rank: the tensor rank.
        signed: whether each axis may also be given as its negative alias.

    Returns:
        A strategy of ``(first, second)`` int pairs with ``first != second`` (modulo ``rank``).
    """
    st = _strategies()
    rank = _check_size(rank, "rank", minimum=2)
    axis = st.integers(0, rank - 1)
    pairs = st.tuples(axis, axis).filter(lambda pair: pair[0] != pair[1])
    if not signed:
        return pairs
    return st.tuples(pairs, st.booleans(), st.booleans()).map(
        lambda item: (item[0][0] - rank * item[1], item[0][1] - rank * item[2])
    )


def divisors(n: int) -> list[int]:
    """The positive divisors of ``n`` (>= 1), in increasing order."""
    n = _check_size(n, "n", minimum=1)
    return [d for d in range(1, n + 1) if n % d == 0]


def divisors_of(n: int) -> Any:
    """A strategy of the positive divisors of ``n`` (>= 1), shrinking towards 1."""
    return _strategies().sampled_from(divisors(n))


_FLOAT_WIDTHS = {"float16": 16, "float32": 32, "float64": 64}


def float_arrays(shape: Any, dtype: str = "float32", min_value: float = -10.0, max_value: float = 10.0) -> Any:
    """Finite numpy float arrays (no NaN, no inf) with values in ``[min_value, max_value]``.

    Args:
        shape: a concrete shape tuple or a strategy of them (e.g. ``shapes()``).
        dtype: ``"float16"``, ``"float32"`` or ``"float64"``.
        min_value: the smallest value.
        max_value: the largest value.

    Returns:
        A strategy of numpy arrays.
    """
    st = _strategies()
    from hypothesis.extra import numpy as hnp

    name = np.dtype(dtype).name
    if name not in _FLOAT_WIDTHS:
        raise ValueError(f"`dtype` must be one of {tuple(_FLOAT_WIDTHS)}. Received: dtype={dtype!r}")
    if not (math.isfinite(min_value) and math.isfinite(max_value)) or min_value > max_value:
        raise ValueError(
            f"`min_value` and `max_value` must be finite with min_value <= max_value. Received: min_value={min_value}, max_value={max_value}"
        )
    elements = st.floats(min_value, max_value, allow_nan=False, allow_infinity=False, allow_subnormal=False, width=_FLOAT_WIDTHS[name])
    return hnp.arrays(np.dtype(name), _as_strategy(shape), elements=elements)


def utf8_texts(min_size: int = 0, max_size: int = 12, astral: bool = True) -> Any:
    """Text without NUL (the padding character of ``mlable_core.text``), often with special characters.

    The alphabet is every Unicode scalar value that UTF-8 can encode (no surrogate),
    mixed with emoji, CJK, Hangul and combining marks; with ``astral`` it also holds
    characters above U+FFFF (4 UTF-8 bytes, 2 UTF-16 units), which codecs often break.

    Args:
        min_size: the fewest characters.
        max_size: the most characters.
        astral: whether characters above U+FFFF may appear.

    Returns:
        A strategy of ``str``.
    """
    st = _strategies()
    min_size, max_size = _check_size(min_size, "min_size"), _check_size(max_size, "max_size")
    _check_range(min_size, max_size, "min_size", "max_size")
    limit = 0x10FFFF if astral else 0xFFFF
    special = sorted({character for character in SPECIAL_CHARACTERS if ord(character) <= limit})
    alphabet = st.one_of(
        st.characters(codec="utf-8", max_codepoint=limit, exclude_characters="\x00"),
        st.sampled_from(special),
    )
    return st.text(alphabet, min_size=min_size, max_size=max_size)


def byte_tokens(text_strategy: Any = None, token_size: int = 4) -> Any:
    """Texts with their UTF-32-BE bytes (``mlable_core.text.encode``) grouped into tokens.

    Each text is encoded into the fewest characters ``S >= max(1, len(text))``
    whose ``4 * S`` bytes split into whole tokens of ``token_size`` bytes (the
    extra characters are the U+0000 padding), then reshaped to
    ``(4 * S / token_size, token_size)``.

    Args:
        text_strategy: a strategy of ``str``; ``utf8_texts()`` by default.
        token_size: the bytes per token, >= 1 (4 is one character per token).

    Returns:
        A strategy of ``(text, tokens)`` pairs, ``tokens`` a ``uint8`` numpy array.
    """
    _strategies()
    token_size = _check_size(token_size, "token_size", minimum=1)
    texts = utf8_texts() if text_strategy is None else text_strategy

    def tokenize(text: str) -> tuple[str, np.ndarray]:
        from mlable_core import text as codec

        # 4 * size is a multiple of token_size when size is a multiple of token_size / gcd(4, token_size)
        step = token_size // math.gcd(4, token_size)
        size = max(step, -(-max(1, len(text)) // step) * step)
        data = _to_numpy(codec.encode(text, size=size))
        return text, data.reshape(-1, token_size)

    return texts.map(tokenize)


def logits(shape: Any = None, min_value: float = -6.0, max_value: float = 6.0) -> Any:
    """Float32 logits with some ``-inf`` (masked tokens) and at least one finite value per row.

    Rows are along the last axis (the vocabulary ``V``). Magnitudes below 1e-30
    become 0: TensorFlow flushes subnormal results to zero on CPU and numpy does
    not, which would make ties differ from a numpy reference.

    Args:
        shape: a shape tuple (rank >= 1, last dim >= 1) or a strategy of them;
            by default ``(B, V)`` with ``B`` in [1, 3] and ``V`` in [1, 12].
        min_value: the smallest finite logit.
        max_value: the largest finite logit.

    Returns:
        A strategy of float32 numpy arrays.
    """
    st = _strategies()
    if shape is None:
        shape = st.tuples(st.integers(1, 3), st.integers(1, 12))

    @st.composite
    def draw_logits(draw: Any) -> np.ndarray:
        dims = tuple(draw(_as_strategy(shape)))
        if not dims or dims[-1] < 1:
            raise ValueError(f"`shape` must have rank >= 1 and a last dim >= 1. Received: shape={dims}")
        values = draw(float_arrays(dims, "float32", min_value, max_value))
        values = np.where(np.abs(values) < 1e-30, np.float32(0), values)
        masked = draw(boolean_masks(dims))
        # keep the first logit of every row finite when the whole row would be masked
        masked[..., 0] &= ~masked.all(axis=-1)
        values[masked] = -np.inf
        return values

    return draw_logits()


def boolean_masks(shape: Any) -> Any:
    """Boolean numpy arrays of ``shape`` (a tuple or a strategy of them)."""
    _strategies()
    from hypothesis.extra import numpy as hnp

    return hnp.arrays(np.bool_, _as_strategy(shape))


def caches(batch: Any = 2, slots: Any = 8, heads: Any = 2, head_dim: Any = 4, min_value: float = -4.0, max_value: float = 4.0) -> Any:
    """Float32 key/value caches of shape ``(2, B, S, K, H)`` (keys at index 0, values at 1).

    Filled with arbitrary finite values: a correct cached attention never reads
    the slots it has not written, whatever they hold (see ``mlable_core.attention``).

    Args:
        batch: ``B``, an int or a strategy of ints.
        slots: ``S``, an int or a strategy of ints.
        heads: ``K`` (key / value heads), an int or a strategy of ints.
        head_dim: ``H``, an int or a strategy of ints.
        min_value: the smallest value.
        max_value: the largest value.

    Returns:
        A strategy of float32 numpy arrays.
    """
    st = _strategies()
    dims = st.tuples(*(_as_strategy(value) for value in (batch, slots, heads, head_dim)))
    return float_arrays(dims.map(lambda sizes: (2, *sizes)), "float32", min_value, max_value)


def positions(batch: Any = 2, length: Any = 6, max_offset: int = 64) -> Any:
    """Per-row positions ``(B, S)``: row ``b`` is ``arange(S) + offset_b``, ``offset_b`` in ``[0, max_offset]``.

    The shape of ``rotary.rotate(x, positions=...)`` and of left-padded batches,
    where every row starts at its own position.

    Args:
        batch: ``B``, an int or a strategy of ints.
        length: ``S``, an int or a strategy of ints.
        max_offset: the largest row offset, >= 0.

    Returns:
        A strategy of int32 numpy arrays of shape ``(B, S)``.
    """
    st = _strategies()
    max_offset = _check_size(max_offset, "max_offset")

    @st.composite
    def draw_positions(draw: Any) -> np.ndarray:
        rows, columns = draw(_as_strategy(batch)), draw(_as_strategy(length))
        offsets = draw(st.lists(st.integers(0, max_offset), min_size=rows, max_size=rows))
        return (np.arange(columns, dtype=np.int32)[None, :] + np.asarray(offsets, dtype=np.int32).reshape(rows, 1)).astype(np.int32)

    return draw_positions()


def chunk_sizes(length: int, min_chunks: int = 2) -> Any:
    """Ways to cut ``length`` positions into consecutive non-empty chunks, for ``check_cached_decoding``.

    Args:
        length: the sequence length ``S``, >= 1.
        min_chunks: the fewest chunks (capped at ``length``); the default 2 makes
            every chunking go through the cache at least once after a prefill.

    Returns:
        A strategy of tuples of positive ints summing to ``length``, e.g. ``(3, 1, 1)``
        (a prefill of 3 positions, then two steps of one).
    """
    st = _strategies()
    length = _check_size(length, "length", minimum=1)
    min_chunks = min(_check_size(min_chunks, "min_chunks", minimum=1), length)
    cuts = st.sets(st.integers(1, length - 1), min_size=min_chunks - 1, max_size=length - 1) if length > 1 else st.just(set())
    return cuts.map(lambda chosen: tuple(right - left for left, right in zip([0, *sorted(chosen)], [*sorted(chosen), length])))


# checkers ----------------------------------------------------------------------------------------


def _largest_difference(actual: np.ndarray, expected: np.ndarray) -> tuple[float, tuple[int, ...]]:
    """The largest absolute difference (inf where only one side is finite) and where it is."""
    actual, expected = actual.astype(np.float64), expected.astype(np.float64)
    same = (actual == expected) | (np.isnan(actual) & np.isnan(expected))
    difference = np.where(same, 0.0, np.abs(actual - expected))
    difference = np.where(np.isnan(difference), np.inf, difference)
    if difference.size == 0:
        return 0.0, ()
    index = np.unravel_index(int(np.argmax(difference)), difference.shape)
    return float(difference[index]), tuple(int(i) for i in index)


def _bound(expected: np.ndarray, atol: float, rtol: float) -> float:
    """``atol + rtol * max(1, max |finite expected|)``: float32 errors grow with the size of the values."""
    finite = np.abs(expected[np.isfinite(expected)]) if expected.size else expected
    return atol + rtol * max(1.0, float(finite.max()) if finite.size else 1.0)


def _describe(array: np.ndarray) -> str:
    return f"array of shape {tuple(array.shape)} and dtype {array.dtype.name}"


def _decode(
    step_fn: Callable[[Any, Any, int], tuple[Any, Any]],
    array: np.ndarray,
    sizes: Sequence[int],
    cache: Any,
    context: str,
    repeat_first: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The outputs of decoding ``array`` chunk by chunk, concatenated on axis 1 (and those of the first chunk's second write)."""
    pieces, step, rewritten = [], 0, None
    for index, size in enumerate(sizes):
        chunk = array[:, step : step + size]
        outputs, cache = step_fn(chunk, cache, step)
        piece = _to_numpy(outputs)
        if piece.ndim < 2 or piece.shape[:2] != (array.shape[0], size):
            raise AssertionError(
                f"check_cached_decoding: chunk {index} (step={step}, size={size}) gave outputs of shape "
                f"{tuple(piece.shape)}, expected (B, {size}, ...) with B={array.shape[0]}; {context}"
            )
        if index == 0 and repeat_first:
            # the same positions written a second time: a cache must overwrite them, not add to them
            outputs, cache = step_fn(chunk, cache, step)
            rewritten = _to_numpy(outputs)
        pieces.append(piece if rewritten is None or index else rewritten)
        step += int(size)
    return np.concatenate(pieces, axis=1), rewritten


def _first_difference(actual: np.ndarray, expected: np.ndarray, sizes: Sequence[int], atol: float) -> tuple[int, int]:
    """The first position (axis 1) where the outputs differ by more than ``atol``, and its chunk."""
    per_position = np.abs(actual.astype(np.float64) - expected.astype(np.float64)).reshape(*actual.shape[:2], -1)
    bad = np.nan_to_num(per_position, nan=np.inf).max(axis=(0, 2)) > atol
    first = int(np.argmax(bad))
    bounds = np.cumsum((0, *sizes))
    return first, int(np.searchsorted(bounds, first, side="right") - 1)


def check_cached_decoding(
    step_fn: Callable[[Any, Any, int], tuple[Any, Any]],
    full_fn: Callable[[Any], Any],
    inputs: Any,
    chunk_sizes: Sequence[int],
    cache: Any,
    atol: float = 1e-5,
    rewrite: bool = True,
    rtol: float = 1e-5,
) -> None:
    """Checks that decoding in chunks through a cache gives the outputs of one full pass.

    The inputs are cut along axis 1 (the sequence axis ``S``) into consecutive
    chunks of ``chunk_sizes``; each chunk goes through
    ``step_fn(chunk, cache, step)``, with ``step`` the position of its first
    element and the cache returned by the previous call. The outputs are
    concatenated along axis 1 and compared to ``full_fn(inputs)``; so are those
    of one prefill of the whole sequence through ``step_fn``. With ``rewrite``, a
    pass from the initial cache writes the first chunk twice (the second time on
    the cache of the first write), as beam search and speculative decoding do;
    its outputs must not change.

    Catches caches that accumulate instead of overwriting (even from a zero
    cache, thanks to the rewrite), slots written at the wrong step, masks that
    let a position see the future or the empty slots, a prefill that differs
    from step-by-step decoding, and chunk boundaries that lose state.

    Args:
        step_fn: ``step_fn(chunk, cache, step) -> (outputs, new_cache)``; ``chunk``
            is ``inputs[:, step:step + size]`` and ``outputs`` has the chunk length on axis 1.
        full_fn: ``full_fn(inputs) -> outputs``, one (causal) pass over the whole sequence.
        inputs: an array ``(B, S, ...)``.
        chunk_sizes: positive ints summing to ``S``, e.g. ``(3, 1, 1)`` for a
            prefill of 3 positions then two decoding steps (see the ``chunk_sizes`` strategy).
        cache: the initial cache given to the first ``step_fn`` call.
        atol: the absolute difference allowed.
        rewrite: run the pass that writes the first chunk twice; it assumes a cache
            of slots (a position written twice holds the last write): switch it off
            for a running state that accumulates by design (an RNN state, a running sum).
        rtol: the difference allowed relative to ``max(1, max |full-pass output|)``.

    Raises:
        ValueError: the chunk sizes are not positive or do not sum to ``S``.
        AssertionError: the chunked outputs differ from the full pass (the message
            gives the chunking, the first chunk and position that differ, and the
            largest difference), or their shapes differ.

    Example:
        >>> def step_fn(chunk, cache, step):  # a cache of slots (B, S); outputs: running sums
        ...     cache = cache.copy()
        ...     cache[:, step : step + chunk.shape[1]] = chunk
        ...     return np.cumsum(cache, axis=1)[:, step : step + chunk.shape[1]], cache
        >>> check_cached_decoding(step_fn, lambda x: np.cumsum(x, axis=1), np.ones((2, 5)), (3, 1, 1), np.zeros((2, 5)))
    """
    array = _to_numpy(inputs)
    if array.ndim < 2:
        raise ValueError(f"`inputs` must have rank >= 2, shape (B, S, ...). Received: inputs with shape {tuple(array.shape)}")
    sizes = tuple(chunk_sizes)
    length = array.shape[1]
    if any(isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1 for size in sizes) or sum(sizes) != length:
        raise ValueError(
            f"`chunk_sizes` must be positive ints summing to the length S={length} of axis 1. "
            f"Received: chunk_sizes={sizes}, inputs with shape {tuple(array.shape)}"
        )
    full = _to_numpy(full_fn(array))
    bound = _bound(full, atol, rtol)
    tolerance = f"{bound:.3g} (atol={atol:g}, rtol={rtol:g})"
    # the chunking asked for, then one prefill of the whole sequence through the cache
    for chunking in [sizes] + ([(length,)] if sizes != (length,) else []):
        context = f"inputs {_describe(array)}, chunk_sizes={chunking}"
        chunked, _ = _decode(step_fn, array, chunking, cache, context)
        if chunked.shape != full.shape:
            raise AssertionError(
                f"check_cached_decoding: the chunked outputs have shape {tuple(chunked.shape)}, the full pass "
                f"{tuple(full.shape)}; {context}"
            )
        largest, where = _largest_difference(chunked, full)
        if largest > bound:
            first, chunk = _first_difference(chunked, full, chunking, bound)
            start = sum(chunking[:chunk])
            raise AssertionError(
                f"check_cached_decoding: decoding in chunks differs from one full pass: max |difference| = {largest:.3g} "
                f"> {tolerance} at index {where} (chunked {float(chunked[where]):.6g}, full {float(full[where]):.6g}); the first differing "
                f"position is {first}, in chunk {chunk} (step={start}, size={chunking[chunk]}); {context}"
            )
    context = f"inputs {_describe(array)}, chunk_sizes={sizes}"
    if not rewrite:
        return
    again, rewritten = _decode(step_fn, array, sizes, cache, context, repeat_first=True)
    first_chunk = full[:, : sizes[0]]
    largest, where = _largest_difference(rewritten, first_chunk) if rewritten is not None and rewritten.shape == first_chunk.shape else (np.inf, ())
    if largest > bound:
        raise AssertionError(
            f"check_cached_decoding: writing the first chunk (step=0, size={sizes[0]}) a second time changes its outputs by "
            f"max |difference| = {largest:.3g} > {tolerance} at index {where}: the cache accumulates (or appends) instead of "
            f"overwriting the slots of a step; {context}"
        )
    largest, where = _largest_difference(again, full)
    if largest > bound:
        first, chunk = _first_difference(again, full, sizes, bound)
        raise AssertionError(
            f"check_cached_decoding: after the first chunk was written twice, decoding differs from one full pass by max "
            f"|difference| = {largest:.3g} > {tolerance} from position {first} (chunk {chunk}): the cache accumulates "
            f"(or appends) instead of overwriting the slots of a step; {context}"
        )


def _check_dependence(
    fn: Callable[[Any, Any], Any], array: np.ndarray, base_positions: np.ndarray, atol: float, rtol: float, context: str
) -> None:
    """Doubling every distance changes the outputs: on a random normal probe for float inputs (the given ones
    may be degenerate, e.g. one non-zero position), on the given inputs otherwise."""
    probe = array
    if array.dtype.kind == "f":
        probe = np.random.default_rng(0).standard_normal(array.shape).astype(array.dtype)
        context += " (the dependence probe: a random normal array of that shape)"
    elif np.count_nonzero(np.any(array.reshape(array.shape[0], array.shape[1], -1) != 0, axis=(0, 2))) < 2:
        return  # fewer than two non-zero positions: no pair of positions can interact
    reference = _to_numpy(fn(probe, base_positions))
    if not reference.size or not np.isfinite(reference).all() or float(np.max(np.abs(reference))) <= 100 * atol:
        return  # outside the function's domain, or too small to tell
    doubled = _to_numpy(fn(probe, 2 * base_positions))
    largest, _ = _largest_difference(doubled, reference) if doubled.shape == reference.shape else (np.inf, ())
    bound = _bound(reference, atol, rtol)
    if largest <= bound:
        raise AssertionError(
            f"check_relative_positions: the outputs do not depend on the positions: doubling every distance "
            f"(positions 2 * arange(S)) changes them by at most {largest:.3g} <= {bound:.3g} (atol={atol:g}, rtol={rtol:g}) "
            f"(are the positions applied?); {context}"
        )


def check_relative_positions(
    fn: Callable[[Any, Any], Any],
    inputs: Any,
    shifts: Sequence[int] = (1, 7, 64),
    atol: float = 1e-4,
    same_position_fn: Callable[[Any], Any] | None = None,
    require_dependence: bool = True,
    rtol: float = 1e-5,
) -> None:
    """Checks that ``fn`` depends on relative positions only: shifting all positions changes nothing.

    ``fn(inputs, positions)`` is called with ``positions = arange(S)`` (int32,
    shape ``(S,)``, ``S`` = axis 1 of the inputs) and with ``arange(S) + shift``
    for each shift; every output must equal the first. Attention scores with
    RoPE applied to the projected queries and keys have this property; RoPE
    applied before a projection, or absolute position embeddings, do not.

    Two more properties, which shift invariance alone misses:

    - with ``require_dependence`` (and ``S >= 2``), doubling every distance
      (``2 * arange(S)``) must change the outputs: a function that ignores its
      positions (RoPE never applied) would pass the shift test. Float inputs are
      replaced by a random normal array of their shape for this property (given
      inputs can be degenerate: one non-zero position interacts with nothing);
      skipped when the outputs are not finite or within ``100 * atol`` of zero;
    - with ``same_position_fn`` (the same computation without positions, e.g.
      attention scores without RoPE), putting every element at one position
      (``full(S, 5)``) must give ``same_position_fn(inputs)``: queries and keys
      rotated by one angle cancel in ``q · k``. An off-by-one between the query
      and key positions is shift invariant but fails this.

    Args:
        fn: ``fn(inputs, positions) -> outputs``.
        inputs: an array ``(B, S, ...)``.
        shifts: the offsets to try (non-zero ints).
        atol: the largest absolute difference allowed (rotations of large
            positions in float32 lose about ``position * 1e-7``).
        same_position_fn: ``same_position_fn(inputs) -> outputs``, ``fn`` without positions.
        require_dependence: check that the outputs depend on the distances.
        rtol: the difference allowed relative to ``max(1, max |output|)``.

    Raises:
        AssertionError: a property fails; the message gives the positions, the
            largest difference and where it is.

    Example:
        >>> scores = lambda x, positions: np.cos(positions[:, None] - positions[None, :]) * x.sum()  # (S, S)
        >>> check_relative_positions(scores, np.ones((1, 3, 2)))
    """
    array = _to_numpy(inputs)
    if array.ndim < 2:
        raise ValueError(f"`inputs` must have rank >= 2, shape (B, S, ...). Received: inputs with shape {tuple(array.shape)}")
    context = f"inputs {_describe(array)}, S={array.shape[1]}"
    base_positions = np.arange(array.shape[1], dtype=np.int32)
    reference = _to_numpy(fn(array, base_positions))
    bound = _bound(reference, atol, rtol)
    tolerance = f"{bound:.3g} (atol={atol:g}, rtol={rtol:g})"
    for shift in shifts:
        shifted = _to_numpy(fn(array, base_positions + np.int32(shift)))
        if shifted.shape != reference.shape:
            raise AssertionError(
                f"check_relative_positions: shift={shift} changed the output shape from {tuple(reference.shape)} "
                f"to {tuple(shifted.shape)}; {context}"
            )
        largest, where = _largest_difference(shifted, reference)
        if largest > bound:
            raise AssertionError(
                f"check_relative_positions: outputs for positions arange(S) + {shift} differ from those for arange(S): "
                f"max |difference| = {largest:.3g} > {tolerance} at index {where} "
                f"(shifted {float(shifted[where]):.6g}, unshifted {float(reference[where]):.6g}): the outputs depend on absolute "
                f"positions (e.g. RoPE applied before the query / key projections); {context}"
            )
    if require_dependence and array.shape[1] >= 2:
        _check_dependence(fn, array, base_positions, atol, rtol, context)
    if same_position_fn is not None:
        expected = _to_numpy(same_position_fn(array))
        same = _to_numpy(fn(array, np.full(array.shape[1], 5, dtype=np.int32)))
        largest, where = _largest_difference(same, expected) if same.shape == expected.shape else (np.inf, ())
        if largest > _bound(expected, atol, rtol):
            raise AssertionError(
                f"check_relative_positions: with every element at position 5 the outputs differ from same_position_fn's by "
                f"max |difference| = {largest:.3g} > {_bound(expected, atol, rtol):.3g} (atol={atol:g}, rtol={rtol:g}) at index {where}: queries and keys are not rotated by the "
                f"same angle (an off-by-one between their positions?); {context}"
            )


__all__ = [
    "HYPOTHESIS_MESSAGE",
    "SPECIAL_CHARACTERS",
    "axis_pairs",
    "boolean_masks",
    "byte_tokens",
    "caches",
    "check_cached_decoding",
    "check_relative_positions",
    "chunk_sizes",
    "divisors",
    "divisors_of",
    "float_arrays",
    "logits",
    "positions",
    "shapes",
    "utf8_texts",
]
