"""End-to-end generation: the demo's ``ByteDecoder`` against keras-hub's ``GPT2CausalLM``, and where a token's time goes.

Goal (issue 13): at least 2x the tokens per second of
``keras_hub.models.GPT2CausalLM`` generating 256 tokens after a 64-token
prompt, both compiled with XLA, greedy, at batch 1 and batch 8 (batch 32 is
reported too).

Both models have the demo's full settings (``mlable_keras.demo.FULL``): the
same depth, width, heads and a vocabulary of 256, random weights, no
preprocessor and no download. keras-hub's feed-forward hidden size is set to
the demo's ``hidden_dim`` (ours is gated: three matrices where GPT-2 has two).
A token is the unit of each model's loop: one byte for GPT-2, ``token_size``
bytes (``token_size / 4`` characters) predicted at once for the ``ByteDecoder``.

What is timed, per call: ours, ``ByteDecoder.generate`` (prompt padded to its
bucket, one prefill, then one token per iteration of a compiled
``tf.while_loop``, cache sized for the bucket + new tokens); keras-hub,
``GPT2CausalLM.generate`` on a token-id dict padded to ``max_length`` (its own
compiled loop, which seeds its cache with one pass over all ``max_length``
positions). The two are timed interleaved, compilation left out (warm-up
calls, reported as ``compile_s``).

The breakdown (batch 1): the same layers, with the same arguments as in
``ByteDecoder.step``, each alone in a compiled loop of as many iterations as
the generation (the attention with its cache filling up as in the
generation), minus an empty loop; "prefill (spread)" is a whole call that
generates one token (the prompt's pass, the call's overheads) divided by the
new tokens; "loop and rest" is the full generation's per-token time minus the
sum of the parts (the loop's own bookkeeping and whatever the parts do
differently together). Each figure is the fastest of interleaved repeats (on
a shared machine the least disturbed run), so the breakdown's total can be
below the median of the table's row. The share of the machine: the bytes a token must read at the least
(every weight once, plus the keys and values of the filled slots of every
row) over its time, against the copy bandwidth measured in the same run (the
weights, ~6 MB, fit in the CPU's caches, so the share can exceed 100%).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks import timing  # noqa: E402
from mlable_core import decoding  # noqa: E402
from mlable_keras.demo import FULL  # noqa: E402
from mlable_keras.models.byte_decoder import BYTES, ByteDecoder  # noqa: E402

# config
PROMPT_TOKENS, NEW_TOKENS = 64, 256
NEW_TOKENS_QUICK = 128
BATCHES = (1, 8, 32)
GOALS = {1: ">= 2x keras-hub (ratio <= 0.5)", 8: ">= 2x keras-hub (ratio <= 0.5)"}
BREAKDOWN_BATCH = 1


def _settings(tiny: bool) -> dict[str, int]:
    if tiny:
        return dict(token_size=4, embed_dim=8, num_layers=1, num_heads=2, hidden_dim=32)
    return dict(token_size=FULL.token_size, embed_dim=FULL.embed_dim, num_layers=FULL.num_layers, num_heads=FULL.num_heads, hidden_dim=FULL.hidden_dim)


def _keras_hub_model(keras_hub: object, settings: dict[str, int], length: int) -> object:
    """keras-hub's GPT-2 of the same shape, compiled for greedy XLA generation."""
    width = settings["token_size"] * settings["embed_dim"]
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=BYTES,
        num_layers=settings["num_layers"],
        num_heads=settings["num_heads"],
        hidden_dim=width,
        intermediate_dim=settings["hidden_dim"],
        dropout=0.0,
        max_sequence_length=length,
    )
    model = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    model.compile(sampler="greedy", jit_compile=True)
    return model


def _keras_hub_generate(model: object, prompt: np.ndarray, length: int) -> Callable[[], object]:
    token_ids = np.zeros((prompt.shape[0], length), dtype="int32")  # (B, S + M), prompt then padding
    token_ids[:, : prompt.shape[1]] = prompt
    padding_mask = np.arange(length)[None, :].repeat(prompt.shape[0], 0) < prompt.shape[1]
    inputs = {"token_ids": token_ids, "padding_mask": padding_mask}
    return lambda: model.generate(inputs, max_length=length, stop_token_ids=None)["token_ids"]


def _weight_bytes(model: ByteDecoder) -> int:
    """Bytes of the weights a decoding step reads: every weight but the embedding table (G of its rows)."""
    dense = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in model.weights if "embedding" not in v.path)
    return dense + model.token_size * model.embed_dim * 4


def _cache_bytes(model: ByteDecoder, batch: int, filled: int) -> int:
    """Bytes of keys and values the attention must read at ``filled`` slots, every block and row."""
    return 2 * batch * filled * model.num_heads * model.head_dim * 4 * model.num_layers


def _measure_many(functions: dict[str, Callable[[], object]], repeats: int) -> dict[str, timing.Timing]:
    """Times several functions interleaved call by call (one warm-up each first): ``repeats`` samples each.

    On a shared machine load comes in bursts of seconds; alternating single calls makes every function
    meet the same bursts, so their ratios hold even when the absolute times move.
    """
    compile_s = {}
    for name, function in functions.items():
        start = time.perf_counter()
        timing.block(function())
        compile_s[name] = time.perf_counter() - start
    samples: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            timing.block(function())
            samples[name].append(time.perf_counter() - start)
    return {
        name: timing.Timing(statistics.median(values), min(values), len(values), compile_s[name], values)
        for name, values in samples.items()
    }


def _breakdown(model: ByteDecoder, batch: int, prompt_tokens: int, new_tokens: int, repeats: int) -> dict[str, float]:
    """Seconds per token of each part of a decoding step, each measured alone in a compiled loop."""
    rng = np.random.default_rng(1)
    bucket = decoding.bucket_length(prompt_tokens)
    slots = bucket + new_tokens
    width, size = model.width, model.token_size
    hidden0 = tf.constant(rng.normal(size=(batch, 1, width)).astype("float32"))
    token0 = tf.constant(rng.integers(0, BYTES, size=(batch, 1, size)).astype("int32"))
    padding = tf.fill([batch], bucket - prompt_tokens)
    caches = model.create_cache(batch, slots)
    visible = (tf.range(slots)[tf.newaxis, :] >= padding[:, tf.newaxis])[:, tf.newaxis, :]  # (B, 1, S)

    def loop(body: Callable, state: object) -> Callable[[], object]:
        """``body(slot, state)`` in a compiled loop over the generation's slots; the caches are created inside, as in ``generate``."""

        @tf.function(jit_compile=True)
        def run(state):
            state = tf.nest.map_structure(lambda leaf: tf.zeros_like(leaf) if leaf.shape.rank == 5 else leaf, state)

            def step(index, state):
                return index + 1, body(index + bucket, state)

            return tf.while_loop(lambda index, _: index < new_tokens, step, (tf.constant(0), state))[1]

        return lambda: run(state)

    def attention_block(index: int) -> Callable:
        def body(slot, state):
            hidden, cache = state
            positions = slot - padding[:, tf.newaxis]  # (B, 1)
            normed = model.attention_norms[index](hidden)
            mixed, cache = model.attentions[index](
                normed, normed, cache=cache, step=slot, training=False, use_causal_mask=True, positions=positions, attention_mask=visible
            )
            return hidden + mixed, cache

        return body

    def feedforward_block(index: int) -> Callable:
        return lambda slot, hidden: hidden + model.feedforwards[index](model.feedforward_norms[index](hidden), training=False)

    logits0 = tf.constant(rng.normal(size=(batch, size, BYTES)).astype("float32"))
    parts: dict[str, Callable[[], object]] = {
        "empty loop": loop(lambda slot, hidden: hidden * 1.0001, hidden0),
        "embedding": loop(lambda slot, token: (token + tf.cast(model.embedding(token)[..., :size] > 0, tf.int32)) % BYTES, token0),
    }
    for index in range(model.num_layers):
        parts[f"attention {index}"] = loop(attention_block(index), (hidden0, caches[index]))
        parts[f"feed-forward {index}"] = loop(feedforward_block(index), hidden0)
    parts["head"] = loop(lambda slot, hidden: hidden + tf.reduce_mean(model.split(model.head(model.final_norm(hidden))), axis=[2, 3])[..., tf.newaxis], hidden0)
    parts["sampling (greedy)"] = loop(lambda slot, logits: logits + tf.cast(decoding.argmax_sampler(logits, None), tf.float32)[..., tf.newaxis], logits0)
    prompt = rng.integers(0, BYTES, size=(batch, prompt_tokens, size)).astype("int32")
    parts["generate"] = lambda: model.generate(prompt, new_tokens)[0]
    parts["prefill"] = lambda: model.generate(prompt, 1)[0]  # the prompt's pass and one token, the call's overheads
    timings = _measure_many(parts, 5 * repeats)
    # the fastest of the interleaved repeats: the parts are short loops, and on a shared machine the
    # least disturbed run is the best estimate of each one's own cost (medians moved up to 2x between parts)
    per_token = {name: value.min_s / new_tokens for name, value in timings.items()}
    empty = per_token.pop("empty loop")
    result = {name: max(value - empty, 0.0) for name, value in per_token.items() if name not in ("generate", "prefill")}
    result["prefill (spread)"] = per_token["prefill"]
    result["loop and rest"] = per_token["generate"] - sum(result.values())
    result["total"] = per_token["generate"]
    return result


def run(quick: bool = False) -> list[timing.Row]:
    tiny = timing.tiny()  # smoke tests (MLABLE_BENCH_TINY=1): a tiny model, a few tokens, one repeat
    prompt_tokens, new_tokens = (4, 4) if tiny else (PROMPT_TOKENS, NEW_TOKENS_QUICK if quick else NEW_TOKENS)
    batches = (1,) if tiny else BATCHES
    repeats = 1 if tiny else (4 if quick else 10)
    settings = _settings(tiny)
    rng = np.random.default_rng(0)
    model = ByteDecoder(**settings)
    model(np.zeros((1, 2, settings["token_size"]), "int32"))
    keras_hub = timing.optional("keras_hub")
    length = prompt_tokens + new_tokens
    hub = None if keras_hub is None else _keras_hub_model(keras_hub, settings, length)
    width = settings["token_size"] * settings["embed_dim"]
    weights = _weight_bytes(model)
    bucket = decoding.bucket_length(prompt_tokens)
    rows = []
    for batch in batches:
        prompt = rng.integers(0, BYTES, size=(batch, prompt_tokens, settings["token_size"]), dtype=np.int32)  # (B, S, G)
        ours_fn = lambda prompt=prompt: model.generate(prompt, new_tokens)[0]  # noqa: E731
        if hub is None:
            ours, theirs = timing.measure(ours_fn, repeats=repeats, warmup=1), None
        else:
            hub_prompt = rng.integers(0, BYTES, size=(batch, prompt_tokens), dtype=np.int32)  # (B, S)
            theirs_fn = _keras_hub_generate(hub, hub_prompt, length)
            pair = _measure_many({"ours": ours_fn, "theirs": theirs_fn}, repeats if batch < 32 else max(1, repeats // 2))
            ours, theirs = pair["ours"], pair["theirs"]
        ours_rate = batch * new_tokens / ours.median_s
        theirs_rate = None if theirs is None else batch * new_tokens / theirs.median_s
        # the least a token reads: every weight once, the keys / values of every filled slot (the bucket's pads included)
        read = sum(weights + _cache_bytes(model, batch, bucket + step) for step in range(1, new_tokens + 1))
        label = (
            f"B={batch} prompt={prompt_tokens} new={new_tokens}; {settings['num_layers']} layers, d={width}, "
            f"{settings['num_heads']} heads, hidden={settings['hidden_dim']}, V={BYTES}"
        )
        note = f"ours {ours_rate:.0f} tokens/s ({settings['token_size']} bytes per token)"
        if theirs_rate is not None:
            note += f", keras-hub {theirs_rate:.0f} tokens/s (1 byte per token), {theirs_rate and ours_rate / theirs_rate:.2f}x"
        rows.append(
            timing.row(
                "generation", f"generate {new_tokens} tokens (greedy)", label, "float32", "xla loop", ours,
                "" if theirs is None else "keras-hub GPT2CausalLM.generate", theirs, GOALS.get(batch, ""),
                bytes_moved=read, note=note,
                extra={
                    "batch": batch,
                    "prompt_tokens": prompt_tokens,
                    "new_tokens": new_tokens,
                    "tokens_per_second": ours_rate,
                    "reference_tokens_per_second": theirs_rate,
                    "reference_compile_s": None if theirs is None else theirs.compile_s,
                },
            )
        )
    parts = _breakdown(model, BREAKDOWN_BATCH, prompt_tokens, new_tokens, repeats)
    total = parts.pop("total")
    shares = ", ".join(f"{name} {seconds * 1e6:.0f} us ({seconds / total:.0%})" for name, seconds in parts.items())
    per_token_read = weights + _cache_bytes(model, BREAKDOWN_BATCH, bucket + new_tokens // 2)
    rows.append(
        timing.row(
            "generation", "per-token breakdown (measured)", f"B={BREAKDOWN_BATCH}, as above", "float32", "xla loop",
            timing.Timing(total, total, 1, 0.0), bytes_moved=per_token_read,
            note=f"{total * 1e6:.0f} us per token: {shares}; reads {per_token_read / 1e6:.1f} MB a token, copy bandwidth {timing.copy_bandwidth() / 1e9:.1f} GB/s",
            extra={"breakdown_us": {name: seconds * 1e6 for name, seconds in parts.items()}, "total_us": total * 1e6},
        )
    )
    return rows


if __name__ == "__main__":
    results = run(quick="--quick" in sys.argv)
    print(timing.markdown_table(results))
    for item in results:
        if "breakdown_us" in item.extra:
            print("\nper-token breakdown, batch", BREAKDOWN_BATCH)
            for name, micros in item.extra["breakdown_us"].items():
                print(f"  {name:20s} {micros:8.1f} us  {micros / item.extra['total_us']:6.1%}")
            print(f"  {'total':20s} {item.extra['total_us']:8.1f} us, share of copy bandwidth {item.bandwidth_share:.0%}")
