"""Text corpora for the demo and for quick experiments.

The default corpus is real English text that every Python installation has:
the docstrings of the standard library's modules, read from their sources with
``ast`` (nothing is imported or executed), in sorted file order, so that the
same Python version gives the same text on every machine, without download.
"""

from __future__ import annotations

import ast
import os
import sysconfig

DEFAULT_MAX_CHARACTERS = 400_000


def stdlib_docstrings(max_characters: int = DEFAULT_MAX_CHARACTERS) -> str:
    """The docstrings of the standard library modules, their classes and functions, in a fixed order.

    Args:
        max_characters: stop reading once this many characters are gathered.

    Returns:
        The docstrings separated by blank lines.
    """
    root = sysconfig.get_paths()["stdlib"]
    pieces: list[str] = []
    total = 0
    for name in sorted(os.listdir(root)):
        if not name.endswith(".py") or name.startswith("_"):
            continue
        path = os.path.join(root, name)
        try:
            with open(path, encoding="utf-8") as handle:
                tree = ast.parse(handle.read(), path)
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
            continue  # a broken or unreadable file of the local installation: skip it
        nodes = [tree] + [node for node in tree.body if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
        for node in nodes:
            text = ast.get_docstring(node)
            if text:
                pieces.append(text.strip())
                total += len(pieces[-1]) + 2
        if total >= max_characters:
            break
    return "\n\n".join(pieces)[:max_characters]


def _read_utf8(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="strict") as handle:
            return handle.read()
    except UnicodeDecodeError as error:
        raise ValueError(
            f"The corpus file {path!r} is not valid UTF-8 (byte {error.start}: {error.reason}). "
            "Convert it, e.g. with `iconv -f LATIN1 -t UTF-8`, or leave it out of the corpus folder."
        ) from None


def load_corpus(path: str | os.PathLike | None = None, max_characters: int | None = None) -> str:
    """Loads a text corpus: the standard library docstrings, one UTF-8 file, or a folder of them.

    Args:
        path: ``None`` for the default corpus (``stdlib_docstrings``), a text file,
            or a folder whose regular files (recursively, sorted by relative path,
            hidden ones skipped) are read and joined with blank lines.
        max_characters: cut the corpus to this many characters (``None``: the
            default corpus keeps ``DEFAULT_MAX_CHARACTERS``, files are read whole).

    Returns:
        The text.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: a file is not valid UTF-8 (the message names it), or the corpus is empty.
    """
    if path is None:
        text = stdlib_docstrings(max_characters or DEFAULT_MAX_CHARACTERS)
        source = "the standard library docstrings"
    else:
        path = os.fspath(path)
        if os.path.isfile(path):
            text = _read_utf8(path)
        elif os.path.isdir(path):
            files = []
            for folder, subfolders, names in os.walk(path):
                subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
                files.extend(os.path.join(folder, name) for name in names if not name.startswith("."))
            files.sort(key=lambda file: os.path.relpath(file, path))
            text = "\n\n".join(_read_utf8(file) for file in files)
        else:
            raise FileNotFoundError(f"The corpus path {path!r} is neither a file nor a folder.")
        source = repr(path)
    if max_characters is not None:
        text = text[:max_characters]
    if not text.strip():
        raise ValueError(f"The corpus from {source} is empty.")
    return text


__all__ = ["DEFAULT_MAX_CHARACTERS", "load_corpus", "stdlib_docstrings"]
