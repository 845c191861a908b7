"""Chunked attention (``mlable_core.chunked``) against plain attention: peak memory and time on long sequences.

Goals (issue 12): causal self-attention, B=1, N=8, H=64, S = 4096 / 8192 /
16384: peak memory <= 1/4 of plain ``mlable_core.attention.attention`` where
plain fits, time <= 1.3x plain.

Memory: each case (kernel, S, forward or forward + backward) runs in a fresh
subprocess with TensorFlow's pooling CPU allocator (``TF_CPU_ALLOCATOR_USE_BFC``),
whose statistics count every tensor byte: the child builds its inputs, runs
the compiled function once (tracing, compiling), resets the statistics and runs
it again; the figure is that call's peak allocation minus what was allocated
just before it (the inputs), i.e. the memory the call itself needs at its peak.
(Peak RSS cannot show this: TensorFlow keeps the pages of freed tensors, so a
second call adds nothing, and a first call also counts tracing.) The child
also reports the peak-RSS growth of its first call, tracing included, in
``extra``; it is the fallback where the allocator has no statistics.

Time: both kernels compiled in this process (``tf.function``; the XLA rows
with ``jit_compile=True``), interleaved repeats, medians.

Plain attention materialises ``(B, N, S, S)`` float32 scores several times (the
scores, the masked copy, the softmax; the backward keeps more); a case whose
estimated peak exceeds ``MEMORY_BUDGET_GIB`` is not run, on the machine shared
with others, and the row says so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from benchmarks import timing

# config
BATCH, HEADS, HEAD_DIM = 1, 8, 64
LENGTHS = (4096, 8192, 16384)
LENGTHS_QUICK = (4096, 8192)
QUERY_CHUNK, KEY_CHUNK = 512, 512
XLA_LENGTHS = (4096,)  # the compiled (jit_compile=True) rows, as under `fit(jit_compile=True)`
MEMORY_BUDGET_GIB = 6.0  # plain cases estimated above this are skipped (the machine is shared)
# (B, N, S, S) float32 buffers alive at plain's peak: measured 1.15 and 4.2 at S=4096, rounded up
PLAIN_COPIES = {"forward": 1.5, "forward+backward": 5.0}
GOAL = "memory <= 1/4, time <= 1.3x"


def _functions(kernel: str, passes: str, jit: bool, query_chunk: int, key_chunk: int):
    """The compiled function ``fn(q, k, v)`` of one case: the output, or the three gradients of ``sum(output)``."""
    import tensorflow as tf

    from mlable_core import attention, chunked

    if kernel == "chunked":
        def attend(q, k, v):
            return chunked.chunked_attention(q, k, v, query_chunk_size=query_chunk, key_chunk_size=key_chunk)
    else:
        def attend(q, k, v):
            return attention.attention(q, k, v)

    def forward_backward(q, k, v):
        with tf.GradientTape() as tape:
            tape.watch([q, k, v])
            total = tf.reduce_sum(attend(q, k, v))
        return tape.gradient(total, [q, k, v])

    return tf.function(attend if passes == "forward" else forward_backward, jit_compile=jit)


def _inputs(batch: int, length: int, heads: int, head_dim: int):
    import tensorflow as tf

    generator = tf.random.Generator.from_seed(0)
    return tuple(generator.normal((batch, length, heads, head_dim)) for _ in range(3))  # (B, S, N, H) each


def _rss_kib(field: str) -> int | None:
    """``VmRSS`` / ``VmHWM`` of this process in KiB (Linux), ``None`` elsewhere."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def child(kernels: list[str], passes: str, length: int, jit: bool, batch: int, heads: int, head_dim: int, query_chunk: int, key_chunk: int) -> dict:
    """Runs in the fresh subprocess (with TensorFlow's pooling CPU allocator): the peak memory of one call, per kernel."""
    return {kernel: _child_case(kernel, passes, length, jit, batch, heads, head_dim, query_chunk, key_chunk) for kernel in kernels}


def _child_case(kernel: str, passes: str, length: int, jit: bool, batch: int, heads: int, head_dim: int, query_chunk: int, key_chunk: int) -> dict:
    import tensorflow as tf

    fn = _functions(kernel, passes, jit, query_chunk, key_chunk)
    q, k, v = _inputs(batch, length, heads, head_dim)
    rss_before = _rss_kib("VmRSS")
    timing.block(fn(q, k, v))  # trace, compile, first allocations
    rss_peak = _rss_kib("VmHWM")
    result = {"rss_first_call_bytes": None if rss_before is None or rss_peak is None else (rss_peak - rss_before) * 1024}
    try:
        tf.config.experimental.reset_memory_stats("CPU:0")
        before = tf.config.experimental.get_memory_info("CPU:0")["current"]
        timing.block(fn(q, k, v))
        result.update(peak_bytes=tf.config.experimental.get_memory_info("CPU:0")["peak"] - before, method="allocator peak")
    except (ValueError, tf.errors.OpError):  # pragma: no cover - a TensorFlow without CPU allocator stats
        result.update(peak_bytes=result["rss_first_call_bytes"], method="peak RSS of the first call")
    return result


def _measure_memory(kernels: list[str], passes: str, length: int, jit: bool, sizes: tuple[int, int, int], chunks: tuple[int, int]) -> dict:
    """The peak memory of one case for each kernel (``{kernel: result}``), measured in one fresh Python process."""
    arguments = [",".join(kernels), passes, str(length), str(int(jit)), *map(str, sizes), *map(str, chunks)]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.pathsep.join(item for item in (root, os.environ.get("PYTHONPATH", "")) if item)
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=path, TF_CPU_ALLOCATOR_USE_BFC="true")
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_chunked", "--child", *arguments],
        capture_output=True, text=True, env=environment, timeout=1200, cwd=root,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"the memory child for {arguments} failed ({completed.returncode}):\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def plain_estimate_bytes(batch: int, heads: int, length: int, passes: str) -> int:
    """Plain attention's estimated peak: ``PLAIN_COPIES`` float32 score tensors ``(B, N, S, S)``."""
    return int(PLAIN_COPIES[passes] * batch * heads * length * length * 4)


def run(quick: bool = False) -> list[timing.Row]:
    tiny = timing.tiny()  # smoke tests (MLABLE_BENCH_TINY=1): tiny shapes, one repeat, one memory child
    if tiny:
        batch, heads, head_dim, lengths, chunks, repeats = 1, 2, 8, (64,), (16, 16), 1
        cases = [(64, "forward", False)]
    else:
        batch, heads, head_dim, chunks = BATCH, HEADS, HEAD_DIM, (QUERY_CHUNK, KEY_CHUNK)
        lengths, repeats = (LENGTHS_QUICK, 3) if quick else (LENGTHS, 5)
        cases = [(length, passes, False) for length in lengths for passes in ("forward", "forward+backward")]
        cases += [(length, "forward+backward", True) for length in XLA_LENGTHS if length in lengths and not quick]
    sizes = (batch, heads, head_dim)
    rows = []
    for length, passes, jit in cases:
        estimate = plain_estimate_bytes(batch, heads, length, passes)
        plain_fits = estimate <= MEMORY_BUDGET_GIB * 2**30
        if tiny:  # the smoke test: both kernels in one child, which saves an interpreter start
            measured = _measure_memory(["chunked", "plain"], passes, length, jit, sizes, chunks)
            ours_memory, plain_memory = measured["chunked"], measured["plain"]
        else:  # a fresh process per kernel and case
            ours_memory = _measure_memory(["chunked"], passes, length, jit, sizes, chunks)["chunked"]
            plain_memory = _measure_memory(["plain"], passes, length, jit, sizes, chunks)["plain"] if plain_fits else None
        q, k, v = _inputs(batch, length, heads, head_dim)
        ours_fn = _functions("chunked", passes, jit, *chunks)
        if plain_fits:
            plain_fn = _functions("plain", passes, jit, *chunks)
            ours_t, plain_t = timing.compare(lambda: ours_fn(q, k, v), lambda: plain_fn(q, k, v), repeats=repeats, warmup=1, rounds=min(3, repeats))  # noqa: B023
        else:
            ours_t, plain_t = timing.measure(lambda: ours_fn(q, k, v), repeats=max(1, repeats // 2), warmup=1), None  # noqa: B023
        mib = 2**20
        if plain_memory is None:
            note = (
                f"peak +{ours_memory['peak_bytes'] / mib:.0f} MiB; plain not run: estimated {estimate / 2**30:.0f} GiB "
                f"> the {MEMORY_BUDGET_GIB:g} GiB budget"
            )
            memory_ratio = None
        else:
            memory_ratio = ours_memory["peak_bytes"] / max(plain_memory["peak_bytes"], 1)
            note = (
                f"peak +{ours_memory['peak_bytes'] / mib:.0f} MiB vs +{plain_memory['peak_bytes'] / mib:.0f} MiB "
                f"(memory ratio {memory_ratio:.3f})"
            )
        rows.append(
            timing.row(
                "chunked", f"causal attention, {passes}", f"B={batch} N={heads} H={head_dim} S={length}", "float32",
                "xla" if jit else "graph", ours_t, "" if plain_t is None else "plain attention", plain_t, GOAL,
                note=note + f"; blocks {chunks[0]}x{chunks[1]}",
                extra={
                    "S": length, "passes": passes, "peak_bytes": ours_memory["peak_bytes"],
                    "plain_peak_bytes": None if plain_memory is None else plain_memory["peak_bytes"],
                    "memory_ratio": memory_ratio, "memory_method": ours_memory["method"], "plain_estimate_bytes": estimate,
                    "rss_first_call_bytes": ours_memory["rss_first_call_bytes"],
                    "plain_rss_first_call_bytes": None if plain_memory is None else plain_memory["rss_first_call_bytes"],
                },
            )
        )
    return rows


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        names, passes, length, jit, batch, heads, head_dim, query_chunk, key_chunk = sys.argv[2:11]
        result = child(names.split(","), passes, int(length), jit == "1", int(batch), int(heads), int(head_dim), int(query_chunk), int(key_chunk))
        print(json.dumps(result))
        sys.exit(0)
    start = time.time()
    results = run(quick="--quick" in sys.argv)
    print(timing.markdown_table(results))
    print(f"({time.time() - start:.0f} s)", file=sys.stderr)
