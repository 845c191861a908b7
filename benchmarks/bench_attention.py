"""Per-token decode latency of one cached attention layer against keras-hub's.

Goals (issue 4): at least 4x faster than ``keras_hub.layers.CachedMultiHeadAttention``
in XLA at 512 filled slots, at least 1.5x at 4095, with B=4, model width 512,
8 heads of 64 and a cache allocated for 4096 slots.

Two ways of decoding are measured, each side by side with keras-hub in the
same process:

- ``xla loop``: a compiled ``tf.while_loop`` (``jit_compile=True``) that
  runs one decoding step per iteration with the cache threaded through, the
  way generation runs; every iteration decodes at the same filled length
  (it rewrites the slot ``filled``, attending over ``filled + 1`` slots). The
  figure is the MARGINAL cost of one more iteration,
  ``(t(K2) - t(K1)) / (K2 - K1)``, which leaves out the once-per-loop cost of
  copying the cache into the loop. keras-hub gets the causal mask over the
  slots, which it needs to ignore the empty ones.
- ``per call``: one compiled call per token from Python (graph mode with the
  filled-length slice, and XLA), which returns a new cache each time: the
  copy of the whole cache that this implies is part of the figure, for both,
  and dominates it. On machines where fresh large buffers page-fault slowly
  (e.g. small VMs), ``TF_CPU_ALLOCATOR_USE_BFC=true`` (TensorFlow's pooling
  CPU allocator) shrinks that part considerably, for both.

The share of copy bandwidth is the bytes of the filled cache (keys and values
up to the filled length) read per token, over the time per token, over the
machine's copy bandwidth measured in the same run.

Issue 12 adds, each side by side in the same process:

- grouped-query heads against our multi-head layer (decode step, cache size);
- a ring cache of ``W=512`` slots generating 4096 positions in one compiled
  loop, against a linear 4096-slot cache with the window as a mask: the time
  per position in a late window of the generation over an early one (flat is
  ``~1``), and the cache bytes;
- RoPE inside the attention (``rotary=True``) against the same layer without
  it, on the compiled decode step.
"""

from __future__ import annotations

import statistics
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from benchmarks import timing
from mlable_core import attention, rotary
from mlable_keras.layers.transformer import CachedMultiHeadAttention

# config
BATCH, WIDTH, HEADS, HEAD_DIM, SLOTS = 4, 512, 8, 64, 4096
RING_WINDOW, RING_LENGTH, RING_SPAN = 512, 4096, 256  # the ring benchmark times positions [512, 768) and [3840, 4096)
FILLED = (128, 512, 2048, 4095)
FILLED_QUICK = (512, 4095)
SIGNAL_S = 1.0  # seconds of loop iterations per timing sample
GOALS = {512: ">= 4x faster (ratio <= 0.25)", 4095: ">= 1.5x faster (ratio <= 0.67)"}


def _layers(batch: int, width: int, heads: int, head_dim: int) -> tuple[keras.layers.Layer, keras.layers.Layer | None]:
    """Our layer and keras-hub's with the same weights (``None`` for keras-hub's when it is not installed)."""
    ours = CachedMultiHeadAttention(num_heads=heads, key_dim=head_dim)
    x = tf.zeros((batch, 1, width))
    ours(x, x)
    keras_hub = timing.optional("keras_hub")
    if keras_hub is None:
        return ours, None
    hub = keras_hub.layers.CachedMultiHeadAttention(num_heads=heads, key_dim=head_dim)
    hub(x, x)
    hub.set_weights(ours.get_weights())
    return ours, hub


def caches(batch: int, slots: int, heads: int, head_dim: int) -> tuple[tf.Tensor, tf.Tensor]:
    """One random filled cache in our layout ``(2, B, S, N, H)`` and in keras-hub's ``(B, 2, S, N, H)``."""
    values = np.random.default_rng(0).normal(size=(2, batch, slots, heads, head_dim)).astype("float32")
    return tf.constant(values), tf.constant(values.transpose(1, 0, 2, 3, 4))


def keras_hub_per_call(hub: keras.layers.Layer, x: tf.Tensor, slots: int):
    """keras-hub's decode step as one XLA-compiled call ``fn(cache, step)``, with the causal mask over the slots."""
    batch = x.shape[0]

    @tf.function(jit_compile=True)
    def hub_xla(cache: tf.Tensor, step: tf.Tensor) -> tf.Tensor:
        mask = tf.broadcast_to(tf.range(slots)[None, None, :] <= step, (batch, 1, slots))
        return hub(x, x, cache=cache, cache_update_index=step, attention_mask=mask)[0]

    return hub_xla


def _loop_functions(ours: keras.layers.Layer, hub: keras.layers.Layer | None, x: tf.Tensor, slots: int):
    """Compiled loops ``fn(cache, position, steps)`` that decode at ``position`` ``steps`` times.

    Every iteration writes the slot ``position`` again (a write replaces the
    slot) and attends over the ``position + 1`` filled slots, so each costs
    exactly one decoding step at that filled length, however many run.
    """
    batch = x.shape[0]

    @tf.function(jit_compile=True)
    def ours_loop(cache: tf.Tensor, position: tf.Tensor, steps: tf.Tensor) -> tf.Tensor:
        def body(index, cache, total):
            outputs, cache = ours(x, x, cache=cache, step=position)
            return index + 1, cache, total + outputs[0, 0, 0]

        _, cache, total = tf.while_loop(lambda index, *_: index < steps, body, (tf.constant(0), cache, tf.constant(0.0)))
        return total + cache[0, 0, 0, 0, 0]

    @tf.function(jit_compile=True)
    def hub_loop(cache: tf.Tensor, position: tf.Tensor, steps: tf.Tensor) -> tf.Tensor:
        # keras-hub attends to every slot unless told otherwise: give it the causal mask over the slots
        mask = tf.broadcast_to(tf.range(slots)[None, None, :] <= position, (batch, 1, slots))  # (B, T=1, S)

        def body(index, cache, total):
            outputs, cache = hub(x, x, cache=cache, cache_update_index=position, attention_mask=mask)
            return index + 1, cache, total + outputs[0, 0, 0]

        _, cache, total = tf.while_loop(lambda index, *_: index < steps, body, (tf.constant(0), cache, tf.constant(0.0)))
        return total + cache[0, 0, 0, 0, 0]

    return ours_loop, (None if hub is None else hub_loop)


def _marginals(loops: dict, position: int, repeats: int, signal_s: float) -> dict[str, timing.Timing]:
    """Median cost of one more iteration of each compiled decode loop ``{name: (fn, cache)}``, interleaved.

    Loops of ``K1`` and ``K2`` iterations run in pairs; each pair gives one
    sample ``(t(K2) - t(K1)) / (K2 - K1)``, which cancels the once-per-call cost
    (copying the cache into the loop). ``K2`` is picked per loop so that the
    iterations take about ``signal_s`` seconds, well above the noise of that
    cost. The loops take turns within each repeat, so that machine drift hits
    them alike.
    """
    position = tf.constant(position)
    first = 2

    def call(fn, cache, steps: int) -> float:
        start = time.perf_counter()
        timing.block(fn(cache, position, tf.constant(steps)))
        return time.perf_counter() - start

    plans = {}
    for name, (fn, cache) in loops.items():
        compile_start = time.perf_counter()
        call(fn, cache, first)  # trace and compile
        compile_s = time.perf_counter() - compile_start
        probe = 16
        estimate = max((call(fn, cache, first + probe) - call(fn, cache, first)) / probe, 1e-5)
        plans[name] = (first + int(min(max(signal_s / estimate, 8), 20_000)), compile_s)
    samples = {name: [] for name in loops}
    for _ in range(repeats):
        for name, (fn, cache) in loops.items():
            second = plans[name][0]
            small, large = call(fn, cache, first), call(fn, cache, second)
            samples[name].append((large - small) / (second - first))
    return {
        name: timing.Timing(max(statistics.median(values), 1e-9), min(values), len(values), plans[name][1], values)
        for name, values in samples.items()
    }


def run(quick: bool = False) -> list[timing.Row]:
    tiny = timing.tiny()  # smoke tests (MLABLE_BENCH_TINY=1): tiny shapes, one repeat
    rows: list[timing.Row] = []
    if tiny:
        batch, width, heads, head_dim, slots, filled_levels, repeats = 2, 32, 2, 16, 64, (32,), 1
    else:
        batch, width, heads, head_dim, slots = BATCH, WIDTH, HEADS, HEAD_DIM, SLOTS
        filled_levels, repeats = (FILLED_QUICK, 3) if quick else (FILLED, 5)
    ours, hub = _layers(batch, width, heads, head_dim)
    x = tf.random.normal((batch, 1, width))
    ours_cache, hub_cache = caches(batch, slots, heads, head_dim)  # (2, B, S, N, H), keras-hub's (B, 2, S, N, H)
    shape = f"B={batch} d={width} {heads}x{head_dim} S={slots}"
    ours_loop, hub_loop = _loop_functions(ours, hub, x, slots)

    ours_graph = tf.function(lambda cache, step: ours(x, x, cache=cache, step=step)[0])
    ours_xla = tf.function(lambda cache, step: ours(x, x, cache=cache, step=step)[0], jit_compile=True)
    hub_xla = None if hub is None else keras_hub_per_call(hub, x, slots)

    for filled in filled_levels:
        label = f"{shape} filled={filled}"
        read = 2 * batch * (filled + 1) * heads * head_dim * 4  # keys and values up to the new slot
        goal = GOALS.get(filled, "")
        signal = 0.01 if tiny else (SIGNAL_S / 2 if quick else SIGNAL_S)
        loops = {"ours": (ours_loop, ours_cache)} | ({} if hub_loop is None else {"hub": (hub_loop, hub_cache)})
        marginals = _marginals(loops, filled, repeats, signal)
        ours_t, hub_t = marginals["ours"], marginals.get("hub")
        bucket = min(length for length in attention.bucket_lengths(slots) if length >= filled + 1)
        rows.append(
            timing.row(
                "attention", "decode 1 token", label, "float32", "xla loop (marginal)", ours_t,
                "" if hub_t is None else "keras-hub CachedMHA", hub_t, goal, read,
                note=f"ours reads a bucket of {bucket} slots" + ("" if hub_t is None else f", keras-hub all {slots}"),
                extra={"filled": filled, "slots": slots},
            )
        )
        step = tf.constant(filled)
        for mode, fn in (("graph per call", ours_graph), ("xla per call", ours_xla)):
            if hub is None:
                per_call, per_call_hub = timing.measure(lambda: fn(ours_cache, step), repeats=repeats), None  # noqa: B023
            else:
                per_call, per_call_hub = timing.compare(lambda: fn(ours_cache, step), lambda: hub_xla(hub_cache, step), repeats=repeats)  # noqa: B023
            rows.append(
                timing.row(
                    "attention", "decode 1 token", label, "float32", mode, per_call,
                    "" if hub is None else "keras-hub CachedMHA (xla per call)", per_call_hub, "", read,
                    note="returns a new cache: one copy of the whole cache per call" + ("" if hub is None else ", for both"),
                    extra={"filled": filled, "slots": slots},
                )
            )
    rows.extend(_grouped_query_rows(batch, width, heads, head_dim, slots, filled_levels[-1], repeats, tiny, quick, ours, ours_loop, ours_cache, x))
    rows.extend(_rotary_rows(batch, width, heads, head_dim, slots, filled_levels, repeats, tiny, quick, ours, ours_loop, ours_cache, x))
    rows.extend(_ring_rows(tiny, quick))
    return rows


def _grouped_query_rows(batch, width, heads, head_dim, slots, filled, repeats, tiny, quick, mha, mha_loop, mha_cache, x):
    """Grouped-query heads (K = N / 4) against our multi-head layer: decode step time and cache size.

    Goal (issue 12): at B=4, d=512, N=8, K=2, 4096 slots, 4095 filled, the cache is <= 1/4 of MHA's and the
    compiled decode step takes <= 0.5x of our MHA step.
    """
    kv_heads = max(1, heads // 4)
    gqa = CachedMultiHeadAttention(num_heads=heads, key_dim=head_dim, num_key_value_heads=kv_heads)
    gqa(x, x)
    gqa_loop, _ = _loop_functions(gqa, None, x, slots)
    gqa_cache = tf.constant(np.random.default_rng(1).normal(size=(2, batch, slots, kv_heads, head_dim)).astype("float32"))
    signal = 0.01 if tiny else (SIGNAL_S / 2 if quick else SIGNAL_S)
    marginals = _marginals({"gqa": (gqa_loop, gqa_cache), "mha": (mha_loop, mha_cache)}, filled, repeats, signal)
    gqa_t, mha_t = marginals["gqa"], marginals["mha"]
    cache_bytes = {"gqa": int(np.prod(gqa_cache.shape)) * 4, "mha": int(np.prod(mha_cache.shape)) * 4}
    read = 2 * batch * (filled + 1) * kv_heads * head_dim * 4
    return [
        timing.row(
            "attention", f"decode 1 token, GQA K={kv_heads}", f"B={batch} d={width} {heads}x{head_dim} S={slots} filled={filled}",
            "float32", "xla loop (marginal)", gqa_t, f"our MHA N={heads}", mha_t, "<= 0.5x time, cache <= 1/4", read,
            note=f"cache {cache_bytes['gqa'] / 2**20:.1f} MiB vs {cache_bytes['mha'] / 2**20:.1f} MiB ({cache_bytes['gqa'] / cache_bytes['mha']:.2f}x)",
            extra={"filled": filled, "slots": slots, "cache_bytes": cache_bytes},
        )
    ]


def _rotation_loop(batch: int, heads: int, head_dim: int):
    """A compiled loop ``fn(cache, position, steps)`` doing only the RoPE work of a decode step: rotating
    one query and one key ``(B, 1, N, H)`` at ``position`` (the cache is not used)."""
    query, key = tf.random.normal((batch, 1, heads, head_dim)), tf.random.normal((batch, 1, heads, head_dim))

    @tf.function(jit_compile=True)
    def loop(cache: tf.Tensor, position: tf.Tensor, steps: tf.Tensor) -> tf.Tensor:
        def body(index, total):
            turned = [rotary.rotate(tensor, 1, -1, offset=position + index) for tensor in (query, key)]
            return index + 1, total + tf.reduce_sum(turned[0]) + tf.reduce_sum(turned[1])  # every element used: no pruning

        return tf.while_loop(lambda index, *_: index < steps, body, (tf.constant(0), tf.constant(0.0)))[1]

    return loop


def _rotary_rows(batch, width, heads, head_dim, slots, filled_levels, repeats, tiny, quick, plain, plain_loop, cache, x):
    """RoPE inside the attention against the same layer without it: compiled decode step (goal: <= 1.1x).

    The whole-step ratio is within the noise of a loaded machine, so the RoPE work is also timed alone (the
    rotation of one query and one key per step, in the same kind of loop) against the step without RoPE.
    """
    rope = CachedMultiHeadAttention(num_heads=heads, key_dim=head_dim, rotary=True)
    rope(x, x)
    rope.set_weights(plain.get_weights())
    rope_loop, _ = _loop_functions(rope, None, x, slots)
    rotation_loop = _rotation_loop(batch, heads, head_dim)
    signal = 0.01 if tiny else (SIGNAL_S / 2 if quick else SIGNAL_S)
    rows = []
    for filled in filled_levels:
        loops = {"plain": (plain_loop, cache), "rope": (rope_loop, cache), "rotation": (rotation_loop, cache)}
        marginals = _marginals(loops, filled, repeats, signal)
        rope_t, plain_t = marginals["rope"], marginals["plain"]
        rows.append(
            timing.row(
                "attention", "RoPE work alone (rotate q and k)", f"B={batch} {heads}x{head_dim}", "float32",
                "rotation alone, xla loop (marginal)", marginals["rotation"], f"decode step without RoPE, filled={filled}", plain_t,
                "<= 0.1x", extra={"filled": filled, "slots": slots},
            )
        )
        rows.append(
            timing.row(
                "attention", "decode 1 token, rotary=True", f"B={batch} d={width} {heads}x{head_dim} S={slots} filled={filled}",
                "float32", "rope xla loop (marginal)", rope_t, "the same layer without RoPE", plain_t, "<= 1.1x",
                2 * batch * (filled + 1) * heads * head_dim * 4, extra={"filled": filled, "slots": slots},
            )
        )
    return rows


def _generation_loop(window: int, ring: bool):
    """A compiled loop ``fn(q, k, v, cache, start, steps)``: attention of one position per iteration, from ``start``.

    ``ring``: ``ring_attention`` on a ``window``-slot cache; otherwise
    ``cached_attention`` on a linear cache, the window as a mask.
    """

    @tf.function(jit_compile=True)
    def loop(q, k, v, cache, start, steps):
        def body(index, cache, total):
            position = start + index
            if ring:
                output, cache = attention.ring_attention(q, k, v, cache, position)
            else:
                output, cache = attention.cached_attention(q, k, v, cache, position, sliding_window=window)
            return index + 1, cache, total + output[0, 0, 0, 0]

        _, cache, total = tf.while_loop(lambda index, *_: index < steps, body, (tf.constant(0), cache, tf.constant(0.0)))
        return total + cache[0, 0, 0, 0, 0]

    return loop


def _window_timings(runs: dict, inputs: list[tf.Tensor], span: int, repeats: int) -> dict[str, timing.Timing]:
    """Median time per position of each ``{name: (loop, cache, start)}`` over ``[start, start + span)``, interleaved.

    Each sample is a loop of ``span`` iterations minus one of 8, which leaves
    out the once-per-call cost (copying the cache into the loop).
    """
    few = 8

    def call(loop, cache, start: int, steps: int) -> float:
        began = time.perf_counter()
        timing.block(loop(*inputs, cache, tf.constant(start), tf.constant(steps)))
        return time.perf_counter() - began

    compile_s = {}
    for name, (loop, cache, start) in runs.items():
        began = time.perf_counter()
        call(loop, cache, start, few)
        compile_s[name] = time.perf_counter() - began
    samples = {name: [] for name in runs}
    for _ in range(repeats):
        for name, (loop, cache, start) in runs.items():
            small, large = call(loop, cache, start, few), call(loop, cache, start, span)
            samples[name].append(max((large - small) / (span - few), 1e-9))
    return {
        name: timing.Timing(statistics.median(values), min(values), len(values), compile_s[name], values)
        for name, values in samples.items()
    }


def _ring_rows(tiny: bool, quick: bool) -> list[timing.Row]:
    """Ring cache of W slots against a linear cache with the window mask, generating RING_LENGTH positions.

    Goals (issue 12): the ring's memory is flat after W (cache bytes) and so is its time per position (late
    window over early window ~1). The linear cache reads a bucket of up to all its slots under XLA, so its
    time per position grows with the position although the window hides all but W of them.
    """
    if tiny:
        batch, heads, head_dim, window, length, span, repeats = 1, 2, 8, 8, 64, 16, 1
    else:
        batch, heads, head_dim, window, length, span, repeats = BATCH, HEADS, HEAD_DIM, RING_WINDOW, RING_LENGTH, RING_SPAN, 2 if quick else 3
    rng = np.random.default_rng(2)
    inputs = [tf.constant(rng.normal(size=(batch, 1, heads, head_dim)).astype("float32")) for _ in range(3)]
    caches = {
        "ring": attention.create_cache(batch, window, heads, head_dim),
        "linear": attention.create_cache(batch, length, heads, head_dim),
    }
    early, late = window, length - span  # the first window after the ring is full, and the end of the generation
    loops = {name: _generation_loop(window, ring=name == "ring") for name in caches}
    runs = {(name, at): (loops[name], caches[name], at) for name in caches for at in (early, late)}
    timings = _window_timings(runs, inputs, span, repeats)
    results = {name: {at: timings[(name, at)] for at in (early, late)} for name in caches}
    cache_bytes = {name: int(np.prod(cache.shape)) * 4 for name, cache in caches.items()}
    shape = f"B={batch} {heads}x{head_dim} W={window}, {length} positions"
    read = 2 * batch * window * heads * head_dim * 4  # the ring's keys and values, read once per position
    note = f"cache {cache_bytes['ring'] / 2**20:.2f} MiB (ring, any length) vs {cache_bytes['linear'] / 2**20:.2f} MiB (linear)"
    window_text = {at: f"positions {at}-{at + span}" for at in (early, late)}
    return [
        timing.row(
            "attention", "generate, ring cache", shape, "float32", f"ring loop, {window_text[late]}", results["ring"][late],
            f"ring loop, {window_text[early]}", results["ring"][early], "~1 (flat)", read, note=note,
            extra={"filled": window, "slots": window, "cache_bytes": cache_bytes},
        ),
        timing.row(
            "attention", "generate, ring cache", shape, "float32", f"ring loop, {window_text[late]}", results["ring"][late],
            f"linear {length}-slot cache + window mask, {window_text[late]}", results["linear"][late], "", read,
            note=f"linear: {window_text[late]} over {window_text[early]} = {results['linear'][late].median_s / results['linear'][early].median_s:.2f}x",
            extra={"filled": window, "slots": window, "cache_bytes": cache_bytes},
        ),
    ]


def summary(rows: list[timing.Row]) -> str:
    """Speed-ups (alternative time / our time) per mode, for the closing note."""
    lines = []
    for item in rows:
        if item.ratio:
            lines.append(
                f"{item.mode:>20} {item.shape}: speed-up {1 / item.ratio:5.2f}x, "
                f"{item.bandwidth_share or 0:.0%} of copy bandwidth reading the filled cache"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    results = run(quick="--quick" in sys.argv)
    print(timing.markdown_table(results))
    print(summary(results))
