"""The main job (``python -m mlable_keras.demo``) and the reusable ByteDecoder model."""

from __future__ import annotations

import json
import re
import os

import numpy as np
import pytest
import tensorflow as tf

from mlable_keras import corpus, demo
from mlable_keras.models import ByteDecoder, decode_tokens, encode_tokens


def test_quick_demo_trains_generates_and_reloads(tmp_path):
    report = demo.run(demo.QUICK, corpus.load_corpus(max_characters=demo.QUICK.characters), output=str(tmp_path), verbose=0)
    assert report.loss_after < report.loss_before, (report.loss_before, report.loss_after)
    assert report.cached_equals_uncached
    assert report.reload_equal
    assert os.path.isfile(report.model_path)
    assert set(report.accuracies) == {"byte_accuracy", "character_accuracy", "token_accuracy"}
    # a character is right only if its 4 bytes are, a token only if its 4 characters are
    assert report.accuracies["byte_accuracy"] >= report.accuracies["character_accuracy"] >= report.accuracies["token_accuracy"]
    assert report.cached_tokens_per_second > 0 and report.uncached_tokens_per_second > 0
    assert report.completion.strip(), repr(report.completion)
    assert {"bits_per_byte", "val_bits_per_byte", "val_bits_per_character"} <= set(report.history)
    assert 0 < report.bits_per_byte < 8 and set(report.compressors) == {"zlib", "bz2", "lzma"}
    assert report.history["val_bits_per_byte"][-1] == pytest.approx(report.bits_per_byte, rel=1e-3)
    assert len(report.samples) == 3 and all(len(sample) == 3 for sample in report.samples)
    assert report.passed


def test_corpus_from_a_folder(tmp_path):
    (tmp_path / "b.txt").write_text("second é", encoding="utf-8")
    (tmp_path / "a.txt").write_text("first 🙂", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.txt").write_text("third", encoding="utf-8")
    (tmp_path / ".hidden").write_text("never read", encoding="utf-8")
    assert corpus.load_corpus(tmp_path) == "first 🙂\n\nsecond é\n\nthird"
    assert corpus.load_corpus(tmp_path / "a.txt") == "first 🙂"
    assert corpus.load_corpus(tmp_path, max_characters=5) == "first"


def test_default_corpus_is_deterministic_real_text():
    text = corpus.load_corpus(max_characters=20_000)
    assert len(text) == 20_000
    assert text == corpus.stdlib_docstrings(20_000)
    assert text.count(" ") > 2_000  # prose, not code


CORPUS_ERRORS = [
    (lambda tmp: tmp / "missing", FileNotFoundError, r"The corpus path '.*missing' is neither a file nor a folder"),
    (lambda tmp: _write(tmp / "latin1.txt", "café".encode("latin-1")), ValueError, r"The corpus file '.*latin1\.txt' is not valid UTF-8 \(byte 3"),
    (lambda tmp: _write(tmp / "empty.txt", b"  \n"), ValueError, r"The corpus from '.*empty\.txt' is empty"),
]


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("make,error,message", CORPUS_ERRORS)
def test_corpus_errors(tmp_path, make, error, message):
    with pytest.raises(error, match=message):
        corpus.load_corpus(make(tmp_path))


def test_cli_reports_bad_corpora_clearly(tmp_path, capsys):
    assert demo.main(["--quick", "--corpus", str(tmp_path / "missing")]) == 2
    assert "neither a file nor a folder" in capsys.readouterr().err
    bad = _write(tmp_path / "bad.txt", b"ok \xff\xfe not utf-8")
    assert demo.main(["--quick", "--corpus", str(bad)]) == 2
    assert "bad.txt' is not valid UTF-8" in capsys.readouterr().err
    short = _write(tmp_path / "short.txt", "too short".encode())
    assert demo.main(["--quick", "--corpus", str(short)]) == 2
    assert "The corpus is too short" in capsys.readouterr().err


def test_token_codec_round_trip():
    texts = ["hello, world", "naïve 🙂 日本", ""]
    tokens = encode_tokens(texts, num_tokens=4, token_size=16)
    assert tokens.shape == (3, 4, 16) and tokens.dtype == tf.int32
    expected = np.stack([np.frombuffer(text.encode("utf-32-be").ljust(64, b"\0"), np.uint8) for text in texts]).reshape(3, 4, 16)
    np.testing.assert_array_equal(tokens.numpy(), expected)
    assert decode_tokens(tokens) == texts


def test_model_config_generation_and_mixed_precision():
    model = ByteDecoder(token_size=8, embed_dim=4, num_layers=2, num_heads=2, hidden_dim=32)
    prompt = encode_tokens(["abcdefgh", "12345678"], num_tokens=4, token_size=8)
    logits = model(prompt)
    assert logits.shape == (2, 4, 8, 256) and logits.dtype == tf.float32
    config = model.get_config()
    clone = ByteDecoder.from_config(json.loads(json.dumps(config)))
    assert clone.get_config() == config
    cached, lengths = model.generate(prompt, 5)
    np.testing.assert_array_equal(cached.numpy(), model.generate_uncached(prompt, 5).numpy())
    np.testing.assert_array_equal(lengths.numpy(), [5, 5])
    sampled, _ = model.generate(prompt, 5, temperature=0.8, top_p=0.9, seed=(3, 4))
    np.testing.assert_array_equal(sampled.numpy(), model.generate_uncached(prompt, 5, temperature=0.8, top_p=0.9, seed=(3, 4)).numpy())
    half = ByteDecoder(token_size=8, embed_dim=4, num_layers=1, num_heads=2, dtype="mixed_bfloat16")
    assert half(prompt).dtype == tf.float32
    assert half.create_cache(2, 9)[0].dtype == tf.bfloat16
    tokens, _ = half.generate(prompt, 3)
    assert tokens.shape == (2, 7, 8)


MODEL_ERRORS = [
    (lambda: ByteDecoder(token_size=6), ValueError, r"`token_size` must be a multiple of 4 \(UTF-32 characters\)\. Received: token_size=6"),
    (lambda: ByteDecoder(token_size=16, embed_dim=3, num_heads=5), ValueError, r"`num_heads` must divide the model width token_size \* embed_dim = 48"),
    (lambda: ByteDecoder(num_layers=0), ValueError, r"`num_layers` must be an int >= 1\. Received: num_layers=0"),
    (lambda: ByteDecoder(dropout_rate=1.0), ValueError, r"`dropout_rate` must be in \[0, 1\)\. Received: dropout_rate=1\.0"),
    (lambda: ByteDecoder(token_size=8, embed_dim=4, num_heads=2).forward(tf.zeros((1, 2, 8), tf.int32), cache=()), ValueError, r"`step` is required with a `cache`"),
    (lambda: ByteDecoder(token_size=8, embed_dim=4, num_heads=2).generate(tf.zeros((1, 2, 16), tf.int32), 3), ValueError, r"`prompt` must be byte tokens of shape \(B, S, token_size=8\)\. Received: prompt with shape \(1, 2, 16\)"),
    (lambda: ByteDecoder(token_size=8, embed_dim=4, num_heads=2).generate_uncached(tf.zeros((1, 2, 8), tf.int32), 0), ValueError, r"`max_new_tokens` must be an int >= 1\. Received: max_new_tokens=0"),
]


@pytest.mark.parametrize("call,error,message", MODEL_ERRORS)
def test_model_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_readme_demo_section_example_runs():
    import re

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
    with open(path, encoding="utf-8") as handle:
        section = handle.read().split("## The demo: a byte-level language model", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    namespace: dict = {}
    exec(block, namespace)  # noqa: S102 - the README's own lines
    tokens, lengths = namespace["tokens"], namespace["lengths"]
    assert tokens.shape == (1, 22, 8)
    assert 1 <= int(lengths[0]) <= 16
    np.testing.assert_array_equal(tokens[:, :6].numpy(), namespace["prompt"].numpy())
    assert namespace["text"][0].startswith("Hello, world")


ARGUMENT_ERRORS = [
    (["--top-p", "0"], r"--top-p must be in \(0, 1\]\. Received: 0\.0"),
    (["--top-p", "1.5"], r"--top-p must be in \(0, 1\]\. Received: 1\.5"),
    (["--top-k", "0"], r"--top-k must be >= 1\. Received: 0"),
    (["--temperature", "-0.5"], r"--temperature must be >= 0 \(0 for greedy\)\. Received: -0\.5"),
    (["--temperature", "nan"], r"--temperature must be >= 0 \(0 for greedy\)\. Received: nan"),
    (["--epochs", "0"], r"--epochs must be >= 1\. Received: 0"),
    (["--max-new-tokens", "0"], r"--max-new-tokens must be >= 1\. Received: 0"),
    (["--minutes", "0"], r"--minutes must be > 0\. Received: 0\.0"),
    (["--seed", "-1"], r"--seed must be >= 0\. Received: -1"),
    (["--prompt", ""], r"--prompt must not be empty"),
    (["--corpus", "/no/such/corpus"], r"--corpus: the corpus path '/no/such/corpus' is neither a file nor a folder"),
]


@pytest.mark.parametrize("argv,message", ARGUMENT_ERRORS)
def test_cli_rejects_bad_arguments_in_one_line_before_training(argv, message, capsys, monkeypatch):
    monkeypatch.setattr(demo, "run", lambda *args, **kwargs: pytest.fail("trained despite a bad argument"))
    monkeypatch.setattr(demo.corpus, "load_corpus", lambda *args, **kwargs: pytest.fail("read the corpus despite a bad argument"))
    assert demo.main(["--quick", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith("demo: error: ")
    assert re.search(message, line), line


def test_cli_as_a_newcomer_runs_it_prints_one_line_for_a_bad_argument():
    # the README's command, in a fresh interpreter: TensorFlow's C++ start-up lines (oneDNN, CUDA probing, CPU
    # features) must not bury the one error line
    import subprocess
    import sys

    environment = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run(
        [sys.executable, "-m", "mlable_keras.demo", "--epochs", "0"], capture_output=True, text=True, env=environment, timeout=300
    )
    assert result.returncode == 2, result
    assert result.stdout == ""
    assert result.stderr.splitlines() == ["demo: error: --epochs must be >= 1. Received: 0"], result.stderr


def test_cli_rejects_an_output_that_is_a_file(tmp_path, capsys):
    path = _write(tmp_path / "file", b"")
    assert demo.main(["--quick", "--output", str(path)]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv,temperature,note",
    [
        ([], 0.0, None),
        (["--top-p", "0.9"], 1.0, "the temperature is 1.0"),
        (["--top-k", "5"], 1.0, "the temperature is 1.0"),
        (["--top-k", "5", "--temperature", "0.7"], 0.7, None),
        (["--top-k", "5", "--temperature", "0"], 0.0, "change nothing"),
    ],
)
def test_cli_top_k_and_top_p_sample(argv, temperature, note, capsys, monkeypatch):
    calls = []
    monkeypatch.setattr(demo.corpus, "load_corpus", lambda *args, **kwargs: "x" * 1000)
    monkeypatch.setattr(demo, "run", lambda *args, **kwargs: calls.append(args) or demo.Report())
    demo.main(["--quick", *argv])
    assert calls[0][4] == temperature
    output = capsys.readouterr().out
    assert (note in output) if note else ("note:" not in output)


def test_split_and_target_text_are_what_the_metric_scores():
    text = "".join(chr(ord("a") + index % 26) for index in range(2_000)) + "é🙂"
    settings = demo.QUICK
    inputs, targets = demo.build_dataset(text, settings)
    train, valid = demo.split_dataset(inputs, targets)
    assert len(valid[0]) == max(1, round(len(inputs) * demo.VALIDATION_SHARE)) and len(train[0]) + len(valid[0]) == len(inputs)
    np.testing.assert_array_equal(valid[1], targets[-len(valid[0]) :])  # the last rows, deterministic
    row = (settings.num_tokens + 1) * settings.token_size // 4
    characters = settings.token_size // 4
    expected = "".join(text[start + characters : start + row] for start in range(0, len(inputs) * row, row))
    assert demo.target_text(targets) == expected
    padded = encode_tokens(["ab"], num_tokens=2, token_size=8).numpy()  # "ab" then a NUL token
    assert demo.target_text(padded) == "ab"


def test_compressor_bits_per_byte_is_conditioned_on_the_training_text():
    import zlib

    train = "the quick brown fox jumps over the lazy dog. " * 40
    scores = demo.compressor_bits_per_byte(train, train[:450])  # seen before: nearly free
    assert set(scores) == {"zlib", "bz2", "lzma"}
    expected = 8 * (len(zlib.compress((train + train[:450]).encode(), 9)) - len(zlib.compress(train.encode(), 9))) / 450
    assert scores["zlib"] == pytest.approx(expected)
    assert all(value < 1 for value in scores.values()), scores
    random = "".join(chr(code) for code in np.random.default_rng(0).integers(33, 127, 450))
    assert demo.compressor_bits_per_byte(train, random)["lzma"] > 4


def test_schedule_warms_up_decays_and_stops():
    schedule = demo.Schedule(peak=1.0, total_steps=100, warmup=0.1, floor=0.1)
    rates = [schedule.learning_rate(step / 100) for step in range(101)]
    assert rates[0] < rates[5] < rates[10] == pytest.approx(1.0)
    assert all(later <= earlier for earlier, later in zip(rates[10:], rates[11:]))
    assert rates[100] == pytest.approx(0.1)
    schedule.steps = 100
    assert schedule.progress() == 1.0


def test_training_figure_pairs_curves_labels_axes_and_draws_the_compressors(tmp_path):
    pytest.importorskip("matplotlib")
    history = {
        "loss": [1.0, 0.5], "val_loss": [0.9, 0.6],
        "byte_accuracy": [0.5, 0.7], "val_byte_accuracy": [0.4, 0.6],
        "character_accuracy": [0.2, 0.3], "val_character_accuracy": [0.1, 0.2],
        "token_accuracy": [0.2, 0.3], "val_token_accuracy": [0.1, 0.2],  # one character a token: same curve
        "bits_per_byte": [4.0, 3.0], "val_bits_per_byte": [3.5, 2.9],
        "bits_per_character": [4.0, 3.0], "val_bits_per_character": [3.5, 2.9],
    }
    compressors = {"zlib": 2.6, "bz2": 2.3, "lzma": 2.1}
    figure = demo.training_figure(history, compressors)
    loss, accuracy, bits = figure.axes
    for axis in figure.axes:
        assert axis.get_xlabel() == "epoch" and axis.get_ylabel(), axis.get_title()
        lines = {line.get_label(): line for line in axis.get_lines()}
        for name, line in lines.items():
            if name.startswith("val_"):  # a validation curve has its training curve's colour, dashed
                assert line.get_color() == lines[name[4:]].get_color() and line.get_linestyle() == "--", name
    assert {line.get_label() for line in accuracy.get_lines()} == {"byte_accuracy", "val_byte_accuracy", "character_accuracy", "val_character_accuracy"}
    curves = {line.get_label(): line for line in bits.get_lines()}
    references = {label.split()[0]: float(line.get_ydata()[0]) for label, line in curves.items() if "bits per byte)" in label}
    assert references == compressors
    assert {"bits_per_byte", "val_bits_per_byte"} <= set(curves) and "bits_per_character" not in curves
    assert len({curves[label].get_color() for label in curves if "bits per byte)" in label}) == 3
    path = demo._plot(history, str(tmp_path / "training.png"), compressors)
    with open(path, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"


# --model patches: the two-level PatchDecoder on the same rows ----------------------------------------


def test_byte_rows_hold_the_validation_text_of_the_byte_decoder():
    settings = demo.Settings(**{**demo.QUICK.__dict__, "num_tokens": 6})
    text = "héllo wörld, 🙂 a naïve café; " * 4
    inputs, targets = demo.build_dataset(text, settings)
    x, y, weights = demo.byte_rows(inputs, targets)
    assert x.shape == y.shape == weights.shape and x.dtype == y.dtype == np.int32
    np.testing.assert_array_equal(weights, (y != 0).astype(np.float32))
    for row in range(len(x)):
        # the bytes the next-byte model is scored on are the text the ByteDecoder is scored on
        assert bytes(y[row][y[row] != 0].astype(np.uint8)).decode("utf-8") == demo.target_text(targets[row : row + 1])
        whole = demo.target_text(np.concatenate([inputs[row : row + 1], targets[row : row + 1, -1:]], axis=1)).encode("utf-8")
        assert bytes(x[row, : len(whole) - 1].astype(np.uint8)) == whole[:-1]  # each input byte precedes its target


def test_cli_model_patches_runs_the_patch_decoder_and_the_default_does_not(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(demo, "run", lambda *args, **kwargs: calls.append("bytes") or demo.Report(loss_before=1, loss_after=0, cached_equals_uncached=True, reload_equal=True))
    monkeypatch.setattr(demo, "run_patches", lambda settings, *args, **kwargs: calls.append(("patches", settings, kwargs)) or demo.PatchReport(loss_before=1, loss_after=0, reload_equal=True))
    assert demo.main(["--quick", "--model", "patches"]) == 0
    assert demo.main(["--quick"]) == 0
    assert calls[0] == ("patches", demo.QUICK, {"compare_with_readme": False}) and calls[1] == "bytes"
    assert "--model patches" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        demo.main(["--model", "words"])


def test_patches_demo_trains_scores_and_reloads(tmp_path):
    settings = demo.Settings(**{**demo.QUICK.__dict__, "characters": 6_000, "epochs": 1})
    text = corpus.load_corpus(max_characters=settings.characters)
    report = demo.run_patches(settings, text, output=str(tmp_path), verbose=0)
    assert report.loss_after < report.loss_before, (report.loss_before, report.loss_after)
    assert report.reload_equal and os.path.isfile(report.model_path)
    _, valid = demo.split_dataset(*demo.build_dataset(text, settings))
    assert report.validation_bytes == len(demo.target_text(valid[1]).encode("utf-8"))
    assert 0 < report.bits_per_byte < 8 and set(report.compressors) == {"zlib", "bz2", "lzma"}
    assert report.history["val_bits_per_byte"][-1] == pytest.approx(report.bits_per_byte, rel=1e-3)
    assert 1 < report.patches_per_row <= report.max_patches
    assert report.passed
