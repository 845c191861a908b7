"""The main job: train a small byte-level language model and generate text with its KV cache.

    python -m mlable_keras.demo [--quick] [--corpus PATH] [--prompt TEXT] [--temperature T] [--top-p P] [--seed S]

Every step uses the library: the corpus is encoded to UTF-32-BE bytes
(``mlable_core.text``) and grouped into tokens (``mlable_core.reshaping``); the
model (``mlable_keras.models.ByteDecoder``) stacks ``TokunEmbedding``,
``RotaryPositionalEmbedding``, ``CachedMultiHeadAttention``, ``FeedForwardGate``
and ``Divide``; training reports byte / character / token accuracy with the
group-accuracy metrics; generation runs the KV cache in one compiled loop
(``mlable_core.decoding``), is checked token for token against the uncached
loop, and the model round-trips through a ``.keras`` file.

The run exits with status 1 when one of its checks fails, 2 on bad arguments
or a bad corpus.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from mlable_keras import corpus, metrics
from mlable_keras.models.byte_decoder import ByteDecoder, decode_tokens, encode_tokens


@dataclass(frozen=True)
class Settings:
    """What one run does; ``quick`` and ``full`` are the two presets."""

    characters: int  # of corpus text used
    num_tokens: int  # L, tokens per training row
    token_size: int  # K, bytes per token (K / 4 characters)
    embed_dim: int
    num_layers: int
    num_heads: int
    hidden_dim: int
    epochs: int
    batch_size: int
    learning_rate: float
    max_new_tokens: int


FULL = Settings(characters=240_000, num_tokens=64, token_size=8, embed_dim=32, num_layers=2, num_heads=4, hidden_dim=512, epochs=5, batch_size=16, learning_rate=1e-3, max_new_tokens=32)
QUICK = Settings(characters=40_000, num_tokens=32, token_size=8, embed_dim=16, num_layers=1, num_heads=2, hidden_dim=256, epochs=1, batch_size=16, learning_rate=2e-3, max_new_tokens=8)


@dataclass
class Report:
    """What the run measured and checked (``run`` returns it; the tests read it)."""

    rows: int = 0
    loss_before: float = float("nan")
    loss_after: float = float("nan")
    accuracies: dict[str, float] = field(default_factory=dict)
    prompt: str = ""
    completion: str = ""
    cached_equals_uncached: bool = False
    cached_tokens_per_second: float = 0.0
    uncached_tokens_per_second: float = 0.0
    reload_equal: bool = False
    model_path: str = ""
    plot_path: str | None = None
    history: dict[str, list[float]] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.loss_after < self.loss_before and self.cached_equals_uncached and self.reload_equal


def build_dataset(text: str, settings: Settings) -> tuple[np.ndarray, np.ndarray]:
    """Cuts the text into rows of ``L + 1`` tokens and returns ``(inputs, targets)``, both ``(R, L, K)`` int32."""
    characters = (settings.num_tokens + 1) * settings.token_size // 4
    chunks = [text[start : start + characters] for start in range(0, len(text) - characters + 1, characters)]
    if len(chunks) < 2:
        raise ValueError(
            f"The corpus is too short: {len(text)} characters make fewer than 2 rows of {characters} characters."
        )
    tokens = encode_tokens(chunks, settings.num_tokens + 1, settings.token_size).numpy()  # (R, L + 1, K)
    return tokens[:, :-1], tokens[:, 1:]


def build_model(settings: Settings) -> ByteDecoder:
    model = ByteDecoder(
        token_size=settings.token_size,
        embed_dim=settings.embed_dim,
        num_layers=settings.num_layers,
        num_heads=settings.num_heads,
        hidden_dim=settings.hidden_dim,
    )
    model.compile(
        optimizer=keras.optimizers.AdamW(settings.learning_rate, weight_decay=0.01, clipnorm=1.0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[
            metrics.SparseCategoricalGroupAccuracy(group=1, name="byte_accuracy"),
            metrics.SparseCategoricalGroupAccuracy(group=4, name="character_accuracy"),
            metrics.SparseCategoricalGroupAccuracy(group=settings.token_size, name="token_accuracy"),
        ],
        jit_compile=True,
    )
    return model


def _tokens_per_second(function: Any, count: int, repeats: int = 3) -> float:
    function()  # warm-up: tracing and XLA compilation
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        np.asarray(result[0] if isinstance(result, tuple) else result)
        timings.append(time.perf_counter() - start)
    return count / float(np.median(timings))


def _plot(history: dict[str, list[float]], path: str) -> str | None:
    try:
        import matplotlib
        import matplotlib.ticker

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for key, values in history.items():
        axis = left if "loss" in key else right
        axis.plot(range(1, len(values) + 1), values, marker="o", label=key)
    left.set(title="loss", xlabel="epoch")
    right.set(title="accuracy", xlabel="epoch", ylim=(0, 1))
    for axis in (left, right):
        axis.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        axis.legend(fontsize=7)
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def run(
    settings: Settings,
    text: str,
    source: str = "the standard library docstrings",
    prompt: str | None = None,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    output: str | None = None,
    verbose: int = 1,
) -> Report:
    """Runs the demo end to end and returns what it measured; prints as it goes when ``verbose``."""
    say = print if verbose else (lambda *args, **kwargs: None)
    keras.utils.set_random_seed(seed)
    report = Report()
    output = output or tempfile.mkdtemp(prefix="mlable-demo-")
    os.makedirs(output, exist_ok=True)

    inputs, targets = build_dataset(text, settings)
    report.rows = len(inputs)
    split = max(1, len(inputs) // 20)
    train = (inputs[split:], targets[split:])
    valid = (inputs[:split], targets[:split])
    say(f"corpus: {len(text):,} characters from {source} -> {len(inputs)} rows of {settings.num_tokens} tokens "
        f"x {settings.token_size} bytes ({settings.token_size // 4} UTF-32 characters per token)")

    model = build_model(settings)
    model(inputs[:1])
    say(f"model: ByteDecoder, {settings.num_layers} blocks, width {model.width}, {settings.num_heads} heads, "
        f"{model.count_params():,} parameters")

    report.loss_before = float(model.evaluate(*valid, batch_size=settings.batch_size, verbose=0, return_dict=True)["loss"])
    say(f"\ntraining for {settings.epochs} epoch(s) (validation loss before: {report.loss_before:.3f})")
    history = model.fit(
        *train, validation_data=valid, epochs=settings.epochs, batch_size=settings.batch_size, verbose=verbose, shuffle=True
    )
    report.history = {key: [float(value) for value in values] for key, values in history.history.items()}
    scores = model.evaluate(*valid, batch_size=settings.batch_size, verbose=0, return_dict=True)
    report.loss_after = float(scores["loss"])
    report.accuracies = {key: float(value) for key, value in scores.items() if key.endswith("accuracy")}

    # generation: a prompt of whole tokens, continued with the cache and checked against the uncached loop
    prompt_tokens = max(1, min(settings.num_tokens // 2, 8))
    if prompt is None:
        prompt_array = valid[0][:1, :prompt_tokens]
    else:
        characters = settings.token_size // 4
        padded = prompt.rjust(-(-len(prompt) // characters) * characters)[-prompt_tokens * characters :]
        prompt_array = encode_tokens([padded], len(padded) // characters, settings.token_size).numpy()
    report.prompt = decode_tokens(prompt_array)[0]
    sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p, seed=(seed, 0))
    count = settings.max_new_tokens
    say(f"\ngenerating {count} tokens after the prompt {report.prompt!r} "
        f"({'greedy' if temperature == 0 else f'temperature {temperature}, top-k {top_k}, top-p {top_p}'})")
    bar = keras.utils.Progbar(4, verbose=verbose, stateful_metrics=["step"])
    cached, _ = model.generate(prompt_array, count, **sampling)
    bar.update(1)
    uncached = model.generate_uncached(prompt_array, count, **sampling)
    bar.update(2)
    report.cached_equals_uncached = bool(np.array_equal(cached.numpy(), uncached.numpy()))
    report.cached_tokens_per_second = _tokens_per_second(lambda: model.generate(prompt_array, count, **sampling), count)
    bar.update(3)
    report.uncached_tokens_per_second = _tokens_per_second(lambda: model.generate_uncached(prompt_array, count, **sampling), count)
    bar.update(4)
    report.completion = decode_tokens(cached[:, prompt_array.shape[1] :])[0]
    say(f"\n{report.prompt}\u2502{report.completion}\n")

    report.model_path = os.path.join(output, "byte_decoder.keras")
    model.save(report.model_path)
    reloaded = keras.saving.load_model(report.model_path)
    probe = valid[0][:2]
    report.reload_equal = bool(np.array_equal(model(probe).numpy(), reloaded(probe).numpy()))
    report.plot_path = _plot(report.history, os.path.join(output, "training.png"))

    rows = [
        ("validation loss", f"{report.loss_before:.3f} -> {report.loss_after:.3f}", report.loss_after < report.loss_before),
        *[(name.replace("_", " "), f"{value:.1%}", None) for name, value in report.accuracies.items()],
        ("cached == uncached generation", str(report.cached_equals_uncached), report.cached_equals_uncached),
        ("tokens / s, cached (XLA loop)", f"{report.cached_tokens_per_second:,.0f}", None),
        ("tokens / s, uncached (XLA loop)", f"{report.uncached_tokens_per_second:,.0f}", None),
        (".keras reload gives equal outputs", str(report.reload_equal), report.reload_equal),
        ("model file", report.model_path, None),
        ("training curves", report.plot_path or "matplotlib not installed (pip install 'mlable[plot]')", None),
    ]
    width = max(len(name) for name, _, _ in rows)
    say("summary")
    for name, value, check in rows:
        mark = "" if check is None else ("  ok" if check else "  FAILED")
        say(f"  {name.ljust(width)}  {value}{mark}")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlable_keras.demo", description="Train a byte-level language model and generate text with mlable.")
    parser.add_argument("--quick", action="store_true", help="a smaller model and corpus: under a minute")
    parser.add_argument("--corpus", default=None, help="a UTF-8 text file or a folder of them (default: the standard library docstrings)")
    parser.add_argument("--prompt", default=None, help="the text to continue (default: the start of a validation row)")
    parser.add_argument("--epochs", type=int, default=None, help="override the number of epochs")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="tokens to generate")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 for greedy decoding (default)")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="folder for the .keras file and the PNG (default: a temporary folder)")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    changes = {key: value for key, value in (("epochs", args.epochs), ("max_new_tokens", args.max_new_tokens)) if value is not None}
    settings = Settings(**{**settings.__dict__, **changes})
    print(
        "mlable demo: train a byte-level decoder on real text, then generate with its KV cache.\n"
        "  1. encode the corpus to UTF-32-BE bytes, grouped into tokens\n"
        "  2. train TokunEmbedding + RoPE + CachedMultiHeadAttention + FeedForwardGate with fit\n"
        "  3. generate with the cache in one compiled loop, check it against the uncached loop\n"
        "  4. save and reload the model as .keras, plot the training curves\n"
    )
    try:
        text = corpus.load_corpus(args.corpus, max_characters=settings.characters)
        build_dataset(text, settings)  # a corpus too short for one row fails here, with its size
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    source = "the standard library docstrings" if args.corpus is None else repr(args.corpus)
    report = run(settings, text, source, args.prompt, args.temperature, args.top_k, args.top_p, args.seed, args.output)
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
