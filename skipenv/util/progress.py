"""Progress reporting that also works in log files.

On a terminal, tqdm redraws one line in place. With output redirected to a file (``skipenv train > log 2>&1``,
CI, ``nohup``), an in-place bar either prints nothing readable until it ends or floods the file with carriage
returns. :func:`log_friendly_progress` fixes both for the duration of a command: when standard error is not a
terminal it routes every tqdm bar created inside the block (skipenv's and other libraries') through
:class:`LineWriter`: one plain line per bar every :data:`LOG_INTERVAL_S` seconds, e.g.::

    train ppo:  25%|##5       | 64/256 [00:41<02:03,  1.56 episode/s, reward=0.412]

Set ``SKIPENV_PROGRESS_SECONDS`` to change the interval (seconds). :func:`quiet_transformers` silences transformers'
own per-tensor bars within a block.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Iterator, TextIO

__all__ = ["LOG_INTERVAL_S", "is_terminal", "log_friendly_progress", "LineWriter", "quiet_transformers"]

#: seconds between two progress lines when standard error is not a terminal
LOG_INTERVAL_S = 30.0


def is_terminal(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (default ``sys.stderr``) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or file-like without isatty
        return False


class LineWriter:
    """A text stream wrapper that turns tqdm's in-place redraws (``"\\r" + line``) into separate lines, at most one
    per bar every ``interval_s`` seconds (the first and the 100 % line of a bar always pass).

    A bar is told apart by its label (the text before the first ``:``). Empty redraws (a ``leave=False`` bar clearing
    itself) are dropped; text without a carriage return is passed through unchanged. Unicode bar blocks become ``#``.
    """

    _BLOCKS = str.maketrans({c: "#" for c in "\u258f\u258e\u258d\u258c\u258b\u258a\u2589\u2588"})

    def __init__(self, stream: TextIO, interval_s: float = LOG_INTERVAL_S, clock=time.monotonic):
        self.stream, self.interval_s, self.clock = stream, float(interval_s), clock
        self._last: dict[str, float] = {}
        self._text: dict[str, str] = {}

    def write(self, s: str) -> int:
        if "\r" not in s:
            return self.stream.write(s)
        for part in s.split("\r"):
            part = part.strip()
            if not part:
                continue
            label, now = part.split(":", 1)[0], self.clock()
            last = self._last.get(label)
            if part == self._text.get(label):
                continue
            if last is None or now - last >= self.interval_s or "100%" in part:
                self._last[label], self._text[label] = now, part
                self.stream.write(part.translate(self._BLOCKS) + "\n")
        return len(s)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name):  # fileno, encoding, ... of the wrapped stream
        return getattr(self.stream, name)


@contextlib.contextmanager
def log_friendly_progress(interval_s: float | None = None) -> Iterator[bool]:
    """Within the block, make every tqdm bar log-friendly if standard error is not a terminal (no-op otherwise).

    Args:
        interval_s: seconds between progress lines; default ``$SKIPENV_PROGRESS_SECONDS`` or
            :data:`LOG_INTERVAL_S`.

    Yields:
        ``True`` if the log-friendly mode is active (standard error is not a terminal).
    """
    if is_terminal():
        yield False
        return
    if interval_s is None:
        interval_s = float(os.environ.get("SKIPENV_PROGRESS_SECONDS", LOG_INTERVAL_S))
    old_stderr = sys.stderr
    sys.stderr = LineWriter(old_stderr, interval_s)
    try:
        yield True
    finally:
        sys.stderr = old_stderr


@contextlib.contextmanager
def quiet_transformers():
    """Within the block, no transformers progress bars (the per-tensor "Loading weights" bar, printed on every env
    creation); its warnings (e.g. weights missing from a local checkpoint) still show. The setting is restored."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()
