"""End-to-end generation: the demo's ``ByteDecoder`` against keras-hub's ``GPT2CausalLM``.

Goal (issue 8): at least 2x the tokens per second of
``keras_hub.models.GPT2CausalLM`` generating 256 tokens after a 64-token
prompt, both compiled with XLA, greedy, batch 1.

Both models have the demo's full settings (``mlable_keras.demo.FULL``): the
same depth, width, heads and a vocabulary of 256, random weights, no
preprocessor and no download. keras-hub's feed-forward hidden size is set to
the demo's ``hidden_dim`` (ours is gated: three matrices where GPT-2 has two).
A token is the unit of each model's loop: one byte for GPT-2, ``token_size``
bytes (``token_size / 4`` characters) predicted at once for the ``ByteDecoder``.

What is timed, per call: ours, ``ByteDecoder.generate`` (the prefill of the
prompt then one token per iteration of a compiled ``tf.while_loop``, cache
sized for prompt + new tokens); keras-hub, ``GPT2CausalLM.generate`` on a
token-id dict padded to ``max_length`` (its own compiled loop, which seeds its
cache with one pass over all ``max_length`` positions). Compilation is left out
(warm-up calls) and reported as ``compile_s``.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402

from benchmarks import timing  # noqa: E402
from mlable_keras.demo import FULL  # noqa: E402
from mlable_keras.models.byte_decoder import BYTES, ByteDecoder  # noqa: E402

# config
PROMPT_TOKENS, NEW_TOKENS = 64, 256
NEW_TOKENS_QUICK = 128
BATCH = 1
GOAL = ">= 2x keras-hub (ratio <= 0.5)"


def _settings(tiny: bool) -> dict[str, int]:
    if tiny:
        return dict(token_size=4, embed_dim=8, num_layers=1, num_heads=2, hidden_dim=32)
    return dict(token_size=FULL.token_size, embed_dim=FULL.embed_dim, num_layers=FULL.num_layers, num_heads=FULL.num_heads, hidden_dim=FULL.hidden_dim)


def _keras_hub_generate(keras_hub: object, settings: dict[str, int], prompt: np.ndarray, new_tokens: int):
    """keras-hub's compiled ``generate`` for a GPT-2 of the same shape, as a function without arguments."""
    width = settings["token_size"] * settings["embed_dim"]
    length = prompt.shape[1] + new_tokens
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
    token_ids = np.zeros((prompt.shape[0], length), dtype="int32")  # (B, P + new), prompt then padding
    token_ids[:, : prompt.shape[1]] = prompt
    padding_mask = np.arange(length)[None, :].repeat(prompt.shape[0], 0) < prompt.shape[1]
    inputs = {"token_ids": token_ids, "padding_mask": padding_mask}
    return lambda: model.generate(inputs, max_length=length, stop_token_ids=None)["token_ids"]


def run(quick: bool = False) -> list[timing.Row]:
    tiny = timing.tiny()  # smoke tests (MLABLE_BENCH_TINY=1): a tiny model, a few tokens, one repeat
    prompt_tokens, new_tokens = (4, 4) if tiny else (PROMPT_TOKENS, NEW_TOKENS_QUICK if quick else NEW_TOKENS)
    repeats = 1 if tiny else (3 if quick else 6)
    settings = _settings(tiny)
    rng = np.random.default_rng(0)
    model = ByteDecoder(**settings)
    prompt = rng.integers(0, BYTES, size=(BATCH, prompt_tokens, settings["token_size"]), dtype=np.int32)  # (B, P, K)
    model(prompt)
    ours_fn = lambda: model.generate(prompt, new_tokens)[0]  # noqa: E731
    keras_hub = timing.optional("keras_hub")
    if keras_hub is None:
        ours, theirs = timing.measure(ours_fn, repeats=repeats, warmup=1), None
    else:
        hub_prompt = rng.integers(0, BYTES, size=(BATCH, prompt_tokens), dtype=np.int32)  # (B, P)
        theirs_fn = _keras_hub_generate(keras_hub, settings, hub_prompt, new_tokens)
        ours, theirs = timing.compare(ours_fn, theirs_fn, repeats=repeats, warmup=1, rounds=1 if tiny else 3)
    ours_rate = BATCH * new_tokens / ours.median_s
    theirs_rate = None if theirs is None else BATCH * new_tokens / theirs.median_s
    width = settings["token_size"] * settings["embed_dim"]
    label = (
        f"B={BATCH} prompt={prompt_tokens} new={new_tokens}; {settings['num_layers']} layers, d={width}, "
        f"{settings['num_heads']} heads, hidden={settings['hidden_dim']}, V={BYTES}"
    )
    note = f"ours {ours_rate:.0f} tokens/s ({settings['token_size']} bytes per token)"
    if theirs_rate is not None:
        note += f", keras-hub {theirs_rate:.0f} tokens/s (1 byte per token)"
    return [
        timing.row(
            "generation", f"generate {new_tokens} tokens (greedy)", label, "float32", "xla loop", ours,
            "" if theirs is None else "keras-hub GPT2CausalLM.generate", theirs, GOAL, note=note,
            extra={
                "prompt_tokens": prompt_tokens,
                "new_tokens": new_tokens,
                "tokens_per_second": ours_rate,
                "reference_tokens_per_second": theirs_rate,
                "reference_compile_s": None if theirs is None else theirs.compile_s,
            },
        )
    ]


if __name__ == "__main__":
    print(timing.markdown_table(run(quick="--quick" in sys.argv)))
