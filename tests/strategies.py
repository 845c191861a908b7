"""Hypothesis strategies shared by the tests: small shapes, axes and factors.

Sizes stay small so that a property runs in milliseconds and TensorFlow
tracing, not data, dominates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st


def shapes(min_rank: int = 1, max_rank: int = 5, min_side: int = 1, max_side: int = 6) -> st.SearchStrategy[tuple[int, ...]]:
    """Shapes of rank in ``[min_rank, max_rank]`` with sides in ``[min_side, max_side]``."""
    return st.lists(st.integers(min_side, max_side), min_size=min_rank, max_size=max_rank).map(tuple)


def divisors(n: int) -> list[int]:
    """Positive divisors of ``n`` (``[1]`` for 0, whose every factor would do)."""
    return [d for d in range(1, n + 1) if n % d == 0] if n > 0 else [1]


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
