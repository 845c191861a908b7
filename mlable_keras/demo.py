"""The main job: train a small byte-level language model, score it in bits per byte, and generate text.

    python -m mlable_keras.demo [--quick] [--corpus PATH] [--minutes M] [--prompt TEXT]
                                [--temperature T] [--top-k K] [--top-p P] [--seed S] [--output DIR]
                                [--model bytes|patches]

Every step uses the library: the corpus is encoded to UTF-32-BE bytes
(``mlable_core.text``) and grouped into tokens (``mlable_core.reshaping``); the
model (``mlable_keras.models.ByteDecoder``) stacks ``TokunEmbedding``,
``CachedMultiHeadAttention`` with RoPE, ``FeedForwardGate`` and ``Divide``;
training reports byte / character / token accuracy with the group-accuracy
metrics and bits per byte with ``BitsPerByte``, which the run compares with
zlib, bz2 and lzma on the same validation text; generation runs the KV cache in
one compiled loop (``mlable_core.decoding``), is checked token for token against
the uncached loop, and the model round-trips through a ``.keras`` file.

``--model patches`` trains the two-level ``PatchDecoder`` (dynamic patches over
UTF-8 bytes) on the same rows with the same budget instead, and scores it in
bits per byte on the same validation text (no generation).

The run exits with status 1 when one of its checks fails, 2 on bad arguments
or a bad corpus.
"""

from __future__ import annotations

import argparse
import bz2
import functools
import lzma
import math
import os
import sys
import tempfile
import time
import warnings
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable

import keras
import numpy as np

from mlable_core import patching
from mlable_keras import corpus, metrics
from mlable_keras.models.byte_decoder import ByteDecoder, decode_tokens, encode_tokens
from mlable_keras.models.patch_decoder import PatchDecoder

try:  # absl prints a warning per compiled function otherwise
    import absl.logging

    absl.logging.set_verbosity(absl.logging.ERROR)
except ImportError:  # pragma: no cover - TensorFlow depends on absl
    pass


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
    epochs: int  # at most; ``minutes`` may stop training earlier
    batch_size: int
    learning_rate: float  # the peak of the warm-up + cosine schedule
    max_new_tokens: int
    minutes: float | None = None  # training time budget, None for no limit


FULL = Settings(characters=480_000, num_tokens=64, token_size=4, embed_dim=64, num_layers=2, num_heads=4, hidden_dim=512, epochs=40, batch_size=32, learning_rate=1e-3, max_new_tokens=64, minutes=4.5)
QUICK = Settings(characters=60_000, num_tokens=32, token_size=4, embed_dim=32, num_layers=1, num_heads=2, hidden_dim=256, epochs=8, batch_size=16, learning_rate=2e-3, max_new_tokens=24, minutes=None)
VALIDATION_SHARE = 0.1  # the last rows of the corpus
SAMPLE_TEMPERATURE = 0.8


@dataclass
class Report:
    """What the run measured and checked (``run`` returns it; the tests read it)."""

    rows: int = 0
    output: str = ""
    loss_before: float = float("nan")
    loss_after: float = float("nan")
    accuracies: dict[str, float] = field(default_factory=dict)
    bits_per_byte: float = float("nan")  # of the model on the validation targets
    bits_per_character: float = float("nan")
    compressors: dict[str, float] = field(default_factory=dict)  # bits per byte on the same text
    validation_bytes: int = 0  # UTF-8 bytes of the validation targets
    epochs_run: int = 0
    training_seconds: float = 0.0
    prompt: str = ""
    completion: str = ""
    samples: list[tuple[str, str, str]] = field(default_factory=list)  # (prompt, greedy, sampled)
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


def split_dataset(inputs: np.ndarray, targets: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Returns ``(train, valid)``: the last ``VALIDATION_SHARE`` of the rows (at least one) are the validation."""
    split = len(inputs) - max(1, round(len(inputs) * VALIDATION_SHARE))
    return (inputs[:split], targets[:split]), (inputs[split:], targets[split:])


def target_text(targets: np.ndarray) -> str:
    """The text of UTF-32-BE byte tokens ``(R, L, K)``, rows joined, without NUL padding (what ``BitsPerByte`` scores)."""
    return np.asarray(targets, dtype=np.uint8).tobytes().decode("utf-32-be").replace("\0", "")


def _zlib(data: bytes) -> bytes:
    return zlib.compress(data, 9)


def _bz2(data: bytes) -> bytes:
    return bz2.compress(data, 9)


def _lzma(data: bytes) -> bytes:
    return lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)


COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {"zlib": _zlib, "bz2": _bz2, "lzma": _lzma}
COMPRESSOR_LEVELS = {"zlib": "-9", "bz2": "-9", "lzma": "-9e"}


def compressor_bits_per_byte(train: str, valid: str) -> dict[str, float]:
    """Bits per UTF-8 byte that each compressor spends on ``valid`` after having seen ``train``.

    ``8 * (len(compress(train + valid)) - len(compress(train))) / len(valid in UTF-8)``: the
    compressors get the training text as context, as the model got it as training data.
    """
    train_bytes, valid_bytes = train.encode("utf-8"), valid.encode("utf-8")
    if not valid_bytes:
        raise ValueError("`valid` must not be empty.")
    return {
        name: 8 * (len(compress(train_bytes + valid_bytes)) - len(compress(train_bytes))) / len(valid_bytes)
        for name, compress in COMPRESSORS.items()
    }


class Schedule(keras.callbacks.Callback):
    """Warm-up then cosine decay of the learning rate, over a step count or a time budget, whichever ends first.

    The progress is ``max(steps / total_steps, seconds / (60 * minutes))``; the learning rate rises
    linearly to ``peak`` over the first ``warmup`` of it, then decays on a cosine to ``floor * peak``,
    and training stops once the progress reaches 1 (at the end of that batch; Keras then validates).
    """

    def __init__(self, peak: float, total_steps: int, minutes: float | None = None, warmup: float = 0.05, floor: float = 0.05) -> None:
        super().__init__()
        self.peak, self.total_steps, self.minutes, self.warmup, self.floor = peak, total_steps, minutes, warmup, floor
        self.steps = 0
        self.start = 0.0

    def progress(self) -> float:
        steps = self.steps / self.total_steps
        seconds = 0.0 if self.minutes is None else (time.perf_counter() - self.start) / (60 * self.minutes)
        return min(1.0, max(steps, seconds))

    def learning_rate(self, progress: float) -> float:
        if progress < self.warmup:
            return self.peak * (progress + 1 / self.total_steps) / self.warmup
        decay = (progress - self.warmup) / (1 - self.warmup)
        return self.peak * (self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * decay)))

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.start = time.perf_counter()

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        self.model.optimizer.learning_rate.assign(min(self.peak, self.learning_rate(self.progress())))

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.steps += 1
        if self.progress() >= 1.0:
            self.model.stop_training = True


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
            metrics.BitsPerByte(),
            metrics.BitsPerByte(per="character", name="bits_per_character"),
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


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def _stage(say: Callable[..., None], label: str, function: Callable[[], Any]) -> Any:
    """Runs ``function`` on one line saying what it runs and how long it took (compilation included)."""
    say(f"  {label} ...", end="", flush=True)
    start = time.perf_counter()
    result = function()
    say(f" {time.perf_counter() - start:.1f} s")
    return result


def training_figure(history: dict[str, list[float]], compressors: dict[str, float] | None = None) -> Any:
    """The training curves as a matplotlib figure (None without matplotlib): loss, accuracies, bits per byte.

    A training curve (solid) and its validation twin (dashed) share one colour; each compressor's bits per
    byte is a horizontal reference line in the bits-per-byte panel.
    """
    try:
        import matplotlib
        import matplotlib.ticker

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(15, 4))
    colours = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"] * 2)
    # a curve equal to another hides it: one character a token makes token accuracy the character accuracy,
    # and on ASCII text bits per character are bits per byte (both stay in the printed summary)
    duplicates = {"bits_per_character"}
    if history.get("token_accuracy") == history.get("character_accuracy"):
        duplicates.add("token_accuracy")
    for key in [key for key in history if not key.startswith("val_") and key not in duplicates]:
        axis = left if key == "loss" else right if key.startswith("bits") else middle
        colour = next(colours)
        for name, style in ((key, "-"), (f"val_{key}", "--")):
            if name in history:
                values = history[name]
                axis.plot(range(1, len(values) + 1), values, style, color=colour, marker="o", markersize=3, label=name)
    references = zip((compressors or {}).items(), ("dimgrey", "black", "darkgoldenrod"), (":", "-.", (0, (5, 1, 1, 1))))
    for (name, value), colour, style in references:
        right.axhline(value, color=colour, linestyle=style, label=f"{name} {COMPRESSOR_LEVELS[name]} ({value:.2f} bits per byte)")
    left.set(title="loss", xlabel="epoch", ylabel="cross-entropy (nats per UTF-32 byte)")
    middle.set(title="accuracy", xlabel="epoch", ylabel="share of targets right", ylim=(0, 1))
    right.set(title="bits per byte (lower is better)", xlabel="epoch", ylabel="bits per UTF-8 byte")
    for axis in (left, middle, right):
        axis.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        axis.legend(fontsize=7)
        axis.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def _plot(history: dict[str, list[float]], path: str, compressors: dict[str, float] | None = None) -> str | None:
    """Saves ``training_figure`` as a PNG at ``path``; None (nothing written) without matplotlib."""
    figure = training_figure(history, compressors)
    if figure is None:
        return None
    import matplotlib.pyplot as plt

    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _prompt_array(prompt: str, settings: Settings, prompt_tokens: int) -> np.ndarray:
    characters = settings.token_size // 4
    padded = prompt.rjust(-(-len(prompt) // characters) * characters)[-prompt_tokens * characters :]
    return encode_tokens([padded], len(padded) // characters, settings.token_size).numpy()


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
    report.output = output or tempfile.mkdtemp(prefix="mlable-demo-")
    os.makedirs(report.output, exist_ok=True)
    say(f"outputs (.keras model, training.png): {report.output}")

    inputs, targets = build_dataset(text, settings)
    report.rows = len(inputs)
    train, valid = split_dataset(inputs, targets)
    say(f"corpus: {len(text):,} characters from {source} -> {len(inputs)} rows of {settings.num_tokens} tokens "
        f"x {settings.token_size} bytes ({_count(settings.token_size // 4, 'UTF-32 character')} per token); "
        f"the last {len(valid[0])} rows are the validation")

    train_text, valid_text = target_text(train[1]), target_text(valid[1])
    report.validation_bytes = len(valid_text.encode("utf-8"))
    report.compressors = compressor_bits_per_byte(train_text, valid_text)

    model = build_model(settings)
    model(inputs[:1])
    say(f"model: ByteDecoder, {_count(settings.num_layers, 'block')}, width {model.width}, {settings.num_heads} heads, "
        f"{model.count_params():,} parameters")

    report.loss_before = float(model.evaluate(*valid, batch_size=settings.batch_size, verbose=0, return_dict=True)["loss"])
    budget = "" if settings.minutes is None else f", at most {settings.minutes:g} minutes"
    say(f"\ntraining for up to {settings.epochs} epoch(s){budget} (validation loss before: {report.loss_before:.3f})")
    steps_per_epoch = -(-len(train[0]) // settings.batch_size)
    schedule = Schedule(settings.learning_rate, settings.epochs * steps_per_epoch, settings.minutes)
    start = time.perf_counter()
    history = model.fit(
        *train, validation_data=valid, epochs=settings.epochs, batch_size=settings.batch_size, verbose=verbose,
        shuffle=True, callbacks=[schedule],
    )
    report.training_seconds = time.perf_counter() - start
    report.history = {key: [float(value) for value in values] for key, values in history.history.items()}
    report.epochs_run = len(report.history.get("loss", []))
    scores = model.evaluate(*valid, batch_size=settings.batch_size, verbose=0, return_dict=True)
    report.loss_after = float(scores["loss"])
    report.accuracies = {key: float(value) for key, value in scores.items() if key.endswith("accuracy")}
    report.bits_per_byte = float(scores["bits_per_byte"])
    report.bits_per_character = float(scores["bits_per_character"])

    # generation: a prompt of whole tokens, continued with the cache and checked against the uncached loop
    prompt_tokens = max(1, min(settings.num_tokens // 2, 32 * 4 // settings.token_size))  # about 32 characters
    prompt_array = valid[0][:1, :prompt_tokens] if prompt is None else _prompt_array(prompt, settings, prompt_tokens)
    report.prompt = decode_tokens(prompt_array)[0]
    sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p, seed=(seed, 0))
    count = settings.max_new_tokens
    say(f"\ngenerating {count} tokens after the prompt {report.prompt!r} "
        f"({'greedy' if temperature == 0 else f'temperature {temperature}, top-k {top_k}, top-p {top_p}'})")
    stage = functools.partial(_stage, say)
    cached, _ = stage("cached loop, first call (traces and compiles it with XLA)", lambda: model.generate(prompt_array, count, **sampling))
    uncached = stage("uncached reference loop, first call (compiles it)", lambda: model.generate_uncached(prompt_array, count, **sampling))
    report.cached_equals_uncached = bool(np.array_equal(cached.numpy(), uncached.numpy()))
    report.cached_tokens_per_second = stage(
        f"timing the cached loop ({count} tokens, median of 3 runs)", lambda: _tokens_per_second(lambda: model.generate(prompt_array, count, **sampling), count)
    )
    report.uncached_tokens_per_second = stage(
        f"timing the uncached loop ({count} tokens, median of 3 runs)",
        lambda: _tokens_per_second(lambda: model.generate_uncached(prompt_array, count, **sampling), count),
    )
    report.completion = decode_tokens(cached[:, prompt_array.shape[1] :])[0]

    # three validation prompts, greedy and sampled, in one batch each
    prompts = valid[0][1:4, :prompt_tokens] if len(valid[0]) >= 4 else inputs[-3:, :prompt_tokens]
    greedy, _ = stage("3 validation prompts, greedy (a batch of 3: compiles once more)", lambda: model.generate(prompts, count))
    sampled, _ = stage(
        f"3 validation prompts, sampled at temperature {SAMPLE_TEMPERATURE}",
        lambda: model.generate(prompts, count, temperature=SAMPLE_TEMPERATURE, seed=(seed, 1)),
    )
    report.samples = list(zip(decode_tokens(prompts), decode_tokens(greedy[:, prompt_tokens:]), decode_tokens(sampled[:, prompt_tokens:])))
    say(f"\n{report.prompt}\u2502{report.completion}\n")
    say(f"validation prompts \u2502 greedy, then sampled at temperature {SAMPLE_TEMPERATURE} (seed {seed}):")
    for head, greedy_text, sampled_text in report.samples:
        say(f"  {head!r}\n    greedy : {greedy_text!r}\n    sampled: {sampled_text!r}")

    report.model_path = os.path.join(report.output, "byte_decoder.keras")
    model.save(report.model_path)
    reloaded = keras.saving.load_model(report.model_path)
    probe = valid[0][:2]
    report.reload_equal = bool(np.array_equal(model(probe).numpy(), reloaded(probe).numpy()))
    report.plot_path = _plot(report.history, os.path.join(report.output, "training.png"), report.compressors)

    say(f"\nbits per byte on the validation text ({report.validation_bytes:,} UTF-8 bytes; the compressors "
        f"also see the {len(train_text):,} training characters first)")
    table = [("mlable ByteDecoder", report.bits_per_byte), *[(f"{name} {COMPRESSOR_LEVELS[name]}", value) for name, value in report.compressors.items()]]
    for name, value in table:
        say(f"  {name.ljust(18)}  {value:5.3f}" + ("  (model)" if name.startswith("mlable") else ""))

    rows = [
        ("validation loss", f"{report.loss_before:.3f} -> {report.loss_after:.3f}", report.loss_after < report.loss_before),
        ("validation bits per byte / character", f"{report.bits_per_byte:.3f} / {report.bits_per_character:.3f}", None),
        *[(name.replace("_", " "), f"{value:.1%}", None) for name, value in report.accuracies.items()],
        ("training", f"{report.epochs_run} epoch(s) in {report.training_seconds:.0f} s", None),
        ("cached == uncached generation", str(report.cached_equals_uncached), report.cached_equals_uncached),
        ("tokens / s, cached (XLA loop)", f"{report.cached_tokens_per_second:,.0f}", None),
        ("tokens / s, uncached (XLA loop)", f"{report.uncached_tokens_per_second:,.0f}", None),
        (".keras reload gives equal outputs", str(report.reload_equal), report.reload_equal),
        ("model file", report.model_path, None),
        ("training curves", report.plot_path or "matplotlib not installed (pip install 'mlable[plot]')", None),
    ]
    width = max(len(name) for name, _, _ in rows)
    say("\nsummary")
    for name, value, check in rows:
        mark = "" if check is None else ("  ok" if check else "  FAILED")
        say(f"  {name.ljust(width)}  {value}{mark}")
    return report


# the two-level model (--model patches) ------------------------------------------------------------

BYTE_DECODER_README = 2.341  # the README's full run of the ByteDecoder on the default corpus, for comparison
PATCH_LENGTH = 16  # the most UTF-8 bytes in one patch
# small hash tables: with BLT's sizes 3 to 8 and 4096 buckets each, the model memorises the demo's few hundred
# kilobytes of training text (the validation bits per byte rise after 2 epochs of --quick)
PATCH_BUCKETS, PATCH_NGRAMS = 1024, (3, 4, 5)


@dataclass
class PatchReport:
    """What the ``--model patches`` run measured (``run_patches`` returns it)."""

    rows: int = 0
    length: int = 0  # S, UTF-8 bytes per row
    max_patches: int = 0
    patches_per_row: float = 0.0  # mean over the validation rows
    loss_before: float = float("nan")
    loss_after: float = float("nan")
    bits_per_byte: float = float("nan")
    bits_per_character: float = float("nan")
    compressors: dict[str, float] = field(default_factory=dict)
    validation_bytes: int = 0
    epochs_run: int = 0
    training_seconds: float = 0.0
    reload_equal: bool = False
    model_path: str = ""
    plot_path: str | None = None
    history: dict[str, list[float]] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.loss_after < self.loss_before and self.reload_equal


def byte_rows(inputs: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rows of ``build_dataset`` as UTF-8 bytes for a next-byte model: ``(inputs, targets, weights)``, each ``(R, S)``.

    Row ``r`` is the UTF-8 text of its ``L + 1`` characters; ``targets[r, t]`` is the byte after
    ``inputs[r, t]``. The bytes of the first character are context only (their targets are 0, weight 0),
    so the targets hold exactly the text that the ByteDecoder predicts (``target_text(targets)``);
    shorter rows end in zero padding (weight 0; ``BitsPerByte`` skips zero bytes too).
    """
    tokens = np.concatenate([inputs, targets[:, -1:]], axis=1)  # (R, L + 1, 4): every character of the row
    texts = [target_text(row[None]) for row in tokens]
    encoded = [text.encode("utf-8") for text in texts]
    length = max(len(data) for data in encoded) - 1
    x = np.zeros((len(texts), length), np.int32)
    y = np.zeros((len(texts), length), np.int32)
    for row, (text, data) in enumerate(zip(texts, encoded)):
        x[row, : len(data) - 1] = list(data[:-1])
        y[row, : len(data) - 1] = list(data[1:])
        y[row, : len(text[0].encode("utf-8")) - 1] = 0  # inside the first character: context, not a target
    return x, y, (y != 0).astype(np.float32)


def build_patch_model(settings: Settings, max_patches: int) -> PatchDecoder:
    """A ``PatchDecoder`` as wide as the ByteDecoder of ``settings`` globally, half as wide locally."""
    width = settings.token_size * settings.embed_dim
    model = PatchDecoder(
        max_patches=max_patches, max_patch_length=PATCH_LENGTH, patching="space", space_bytes=list(patching.SPACELIKE),
        embed_dim=width // 2, global_dim=width, global_layers=settings.num_layers, num_heads=settings.num_heads,
        global_heads=settings.num_heads, num_buckets=PATCH_BUCKETS, ngram_sizes=PATCH_NGRAMS,
    )
    model.compile(
        optimizer=keras.optimizers.AdamW(settings.learning_rate, weight_decay=0.01, clipnorm=1.0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=[metrics.BitsPerByte(encoding="utf-8"), metrics.BitsPerByte(encoding="utf-8", per="character", name="bits_per_character")],
        jit_compile=True,
    )
    return model


def run_patches(
    settings: Settings, text: str, source: str = "the standard library docstrings", seed: int = 0, output: str | None = None,
    verbose: int = 1, compare_with_readme: bool = True,
) -> PatchReport:
    """Trains ``PatchDecoder`` on the demo's rows with the demo's budget and scores it in bits per byte."""
    say = print if verbose else (lambda *args, **kwargs: None)
    keras.utils.set_random_seed(seed)
    report = PatchReport()
    directory = output or tempfile.mkdtemp(prefix="mlable-demo-")
    os.makedirs(directory, exist_ok=True)
    say(f"outputs (.keras model, training.png): {directory}")
    inputs, targets = build_dataset(text, settings)
    train, valid = split_dataset(inputs, targets)
    train_text, valid_text = target_text(train[1]), target_text(valid[1])
    report.validation_bytes = len(valid_text.encode("utf-8"))
    report.compressors = compressor_bits_per_byte(train_text, valid_text)
    x, y, weights = byte_rows(inputs, targets)
    split = len(train[0])
    report.rows, report.length = len(x), x.shape[1]
    # enough patches for every row: none overflows into the last patch
    counts = patching.space_patches(x, x.shape[1], PATCH_LENGTH, patching.SPACELIKE, allow_overflow=True).counts.numpy()
    report.max_patches = int(-(-counts.max() // 4) * 4)
    report.patches_per_row = float(counts[split:].mean())
    say(f"corpus: {len(text):,} characters from {source} -> {len(x)} rows of up to {x.shape[1]} UTF-8 bytes, "
        f"{counts.mean():.1f} patches a row on average (SpaceByte's rule, at most {PATCH_LENGTH} bytes a patch); "
        f"the last {len(x) - split} rows are the validation")
    model = build_patch_model(settings, report.max_patches)
    model(x[:1])
    say(f"model: PatchDecoder, local width {model.embed_dim} (1 encoder + 1 decoder block over the bytes), global width "
        f"{model.global_dim} ({_count(model.global_layers, 'block')} over {report.max_patches} patches), {model.count_params():,} parameters")
    data = dict(x=x[:split], y=y[:split], sample_weight=weights[:split])
    validation = (x[split:], y[split:], weights[split:])
    evaluation = dict(x=x[split:], y=y[split:], sample_weight=weights[split:], batch_size=settings.batch_size, verbose=0, return_dict=True)
    report.loss_before = float(model.evaluate(**evaluation)["loss"])
    budget = "" if settings.minutes is None else f", at most {settings.minutes:g} minutes"
    say(f"\ntraining for up to {settings.epochs} epoch(s){budget} (validation loss before: {report.loss_before:.3f})")
    schedule = Schedule(settings.learning_rate, settings.epochs * -(-split // settings.batch_size), settings.minutes)
    start = time.perf_counter()
    history = model.fit(
        **data, validation_data=validation, epochs=settings.epochs, batch_size=settings.batch_size, verbose=verbose,
        shuffle=True, callbacks=[schedule],
    )
    report.training_seconds = time.perf_counter() - start
    report.history = {key: [float(value) for value in values] for key, values in history.history.items()}
    report.epochs_run = len(report.history.get("loss", []))
    scores = model.evaluate(**evaluation)
    report.loss_after = float(scores["loss"])
    report.bits_per_byte = float(scores["bits_per_byte"])
    report.bits_per_character = float(scores["bits_per_character"])
    report.model_path = os.path.join(directory, "patch_decoder.keras")
    model.save(report.model_path)
    reloaded = keras.saving.load_model(report.model_path)
    report.reload_equal = bool(np.array_equal(model(x[split : split + 2]).numpy(), reloaded(x[split : split + 2]).numpy()))
    with warnings.catch_warnings():  # no accuracy curves here: matplotlib warns about the empty legend
        warnings.simplefilter("ignore", UserWarning)
        report.plot_path = _plot(report.history, os.path.join(directory, "training.png"), report.compressors)

    say(f"\nbits per byte on the validation text ({report.validation_bytes:,} UTF-8 bytes, the same text as the ByteDecoder's)")
    table = [("mlable PatchDecoder", f"{report.bits_per_byte:5.3f}  (model)")]
    if compare_with_readme:
        table.append(("mlable ByteDecoder", f"{BYTE_DECODER_README:5.3f}  (the README's full run, same corpus and budget)"))
    table += [(f"{name} {COMPRESSOR_LEVELS[name]}", f"{value:5.3f}") for name, value in report.compressors.items()]
    for name, value in table:
        say(f"  {name.ljust(19)}  {value}")
    rows = [
        ("validation loss", f"{report.loss_before:.3f} -> {report.loss_after:.3f}", report.loss_after < report.loss_before),
        ("validation bits per byte / character", f"{report.bits_per_byte:.3f} / {report.bits_per_character:.3f}", None),
        ("patches per validation row", f"{report.patches_per_row:.1f} (at most {report.max_patches})", None),
        ("training", f"{report.epochs_run} epoch(s) in {report.training_seconds:.0f} s", None),
        (".keras reload gives equal outputs", str(report.reload_equal), report.reload_equal),
        ("model file", report.model_path, None),
    ]
    width = max(len(name) for name, _, _ in rows)
    say("\nsummary")
    for name, value, check in rows:
        mark = "" if check is None else ("  ok" if check else "  FAILED")
        say(f"  {name.ljust(width)}  {value}{mark}")
    return report


def check_arguments(args: argparse.Namespace) -> str | None:
    """The first problem with the parsed arguments, as one line, or None."""
    checks = [
        (args.epochs is None or args.epochs >= 1, f"--epochs must be >= 1. Received: {args.epochs}"),
        (args.max_new_tokens is None or args.max_new_tokens >= 1, f"--max-new-tokens must be >= 1. Received: {args.max_new_tokens}"),
        (args.minutes is None or (math.isfinite(args.minutes) and args.minutes > 0), f"--minutes must be > 0. Received: {args.minutes}"),
        (args.temperature is None or (math.isfinite(args.temperature) and args.temperature >= 0), f"--temperature must be >= 0 (0 for greedy). Received: {args.temperature}"),
        (args.top_k is None or args.top_k >= 1, f"--top-k must be >= 1. Received: {args.top_k}"),
        (args.top_p is None or 0 < args.top_p <= 1, f"--top-p must be in (0, 1]. Received: {args.top_p}"),
        (args.seed >= 0, f"--seed must be >= 0. Received: {args.seed}"),
        (args.prompt is None or args.prompt != "", "--prompt must not be empty"),
        (args.corpus is None or os.path.isdir(args.corpus) or os.path.isfile(args.corpus), f"--corpus: the corpus path {args.corpus!r} is neither a file nor a folder"),
        (args.output is None or not os.path.exists(args.output) or os.path.isdir(args.output), f"--output {args.output!r} exists and is not a folder"),
    ]
    return next((message for valid, message in checks if not valid), None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlable_keras.demo", description="Train a byte-level language model and generate text with mlable.")
    parser.add_argument("--quick", action="store_true", help="a smaller model and corpus: under a minute")
    parser.add_argument("--corpus", default=None, help="a UTF-8 text file or a folder of them (default: the standard library docstrings)")
    parser.add_argument("--prompt", default=None, help="the text to continue (default: the start of a validation row)")
    parser.add_argument("--epochs", type=int, default=None, help="override the (maximum) number of epochs")
    parser.add_argument("--minutes", type=float, default=None, help=f"training time budget (default: {FULL.minutes:g} for the full run, none with --quick)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="tokens to generate")
    parser.add_argument("--temperature", type=float, default=None, help="0 for greedy decoding (default; 1.0 when --top-k or --top-p is given)")
    parser.add_argument("--top-k", type=int, default=None, help="sample among the k likeliest bytes")
    parser.add_argument("--top-p", type=float, default=None, help="sample in the nucleus of probability p, in (0, 1]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="folder for the .keras file and the PNG (default: a temporary folder)")
    parser.add_argument(
        "--model", choices=("bytes", "patches"), default="bytes",
        help="bytes: the ByteDecoder (default); patches: the two-level PatchDecoder over dynamic patches, trained on "
        "the same rows with the same budget and scored in bits per byte (no generation)",
    )
    args = parser.parse_args(argv)
    error = check_arguments(args)
    if error is not None:
        print(f"demo: error: {error}", file=sys.stderr)
        return 2
    settings = QUICK if args.quick else FULL
    changes = {
        key: value
        for key, value in (("epochs", args.epochs), ("max_new_tokens", args.max_new_tokens), ("minutes", args.minutes))
        if value is not None
    }
    settings = Settings(**{**settings.__dict__, **changes})
    temperature = args.temperature
    if temperature is None:
        temperature = 1.0 if (args.top_k is not None or args.top_p is not None) else 0.0
        if temperature:
            print("note: --top-k / --top-p sample, so the temperature is 1.0 (pass --temperature to change it)")
    elif temperature == 0 and (args.top_k is not None or args.top_p is not None):
        print("note: --temperature 0 is greedy decoding: --top-k / --top-p change nothing")
    if args.model == "patches":
        print(
            "mlable demo, --model patches: a two-level byte model over dynamic patches, on the same rows and budget.\n"
            "  1. the rows of characters as UTF-8 bytes; patches start after space-like bytes (SpaceByte)\n"
            "  2. train HashNgramEmbedding + a local encoder, PatchPooling, a global transformer over the patches,\n"
            "     PatchUnpooling (each byte reads the patch before its own) and a local decoder, with fit\n"
            "  3. score it in bits per byte next to the ByteDecoder and zlib, bz2 and lzma on the same validation text\n"
            "  4. save and reload the model as .keras, plot the training curves\n"
        )
    else:
        print(
            "mlable demo: train a byte-level decoder on real text, then generate with its KV cache.\n"
            "  1. encode the corpus to UTF-32-BE bytes, grouped into tokens\n"
            "  2. train TokunEmbedding + CachedMultiHeadAttention with RoPE + FeedForwardGate with fit\n"
            "  3. score it in bits per byte against zlib, bz2 and lzma on the same validation text\n"
            "  4. generate with the cache in one compiled loop, check it against the uncached loop\n"
            "  5. save and reload the model as .keras, plot the training curves\n"
            )
    try:
        text = corpus.load_corpus(args.corpus, max_characters=settings.characters)
        build_dataset(text, settings)  # a corpus too short for one row fails here, with its size
    except (FileNotFoundError, ValueError) as error:
        print(f"demo: error: {error}", file=sys.stderr)
        return 2
    source = "the standard library docstrings" if args.corpus is None else repr(args.corpus)
    if args.model == "patches":
        compare = args.corpus is None and not args.quick and settings == FULL
        patch_report = run_patches(settings, text, source, args.seed, args.output, compare_with_readme=compare)
        return 0 if patch_report.passed else 1
    report = run(settings, text, source, args.prompt, temperature, args.top_k, args.top_p, args.seed, args.output)
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
