"""A sane default for PyTorch's intra-op CPU threads in processes that run skipenv environments.

PyTorch starts one intra-op thread per physical core in *every* process. Subprocess vector envs (Gymnasium's
``AsyncVectorEnv``, stable-baselines3's ``SubprocVecEnv``) run one env per worker process, so ``N`` workers on ``C``
cores start ``N × C`` busy threads and spend their time contending for cores (two workers on two cores measured
several times slower than with one thread each; see ``benchmarks/bench_threads.py``).

:func:`configure_torch_threads` (called by :func:`skipenv.loading.load_model_and_tokenizer`, i.e. whenever an env
loads its generator) picks, in this order:

1. ``SKIPENV_NUM_THREADS`` if set (a positive integer): that many threads;
2. if ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS`` is set, or :func:`torch.set_num_threads` was already called
   in this process by someone else: nothing is changed (the user chose);
3. in a process started by :mod:`multiprocessing` (a vector-env worker): 1 thread;
4. otherwise (a single in-process env, or in-process vector envs): the cores that are usable *and idle*: the
   cores available to this process (the CPU affinity mask, ``os.sched_getaffinity``, capped at PyTorch's own
   default), less the cores other processes keep busy, estimated by the rounded 1-minute load average
   (``os.getloadavg``): ``max(1, min(usable, os.cpu_count() - round(load)))`` — i.e. ``usable - round(load)``
   when the process may use every core. On a busy machine this is what makes the difference: on 2 cores shared
   with other jobs, the main job with all cores ran ~4× slower per episode than with one thread (5.9 s vs
   1.5–2 s per PPO episode), because threads that wait for each other at every operator lose the most when cores
   are taken away. The load is read once per process, when the first generator loads (later loads keep that
   count: by then this process's own threads are part of the load); set ``SKIPENV_NUM_THREADS`` (or
   ``OMP_NUM_THREADS``) to choose yourself. Where the load average is not available (Windows), it counts as 0.
"""

from __future__ import annotations

import multiprocessing
import os

import torch

__all__ = ["NUM_THREADS_ENV", "default_num_threads", "configure_torch_threads"]

#: environment variable that overrides the thread count chosen by :func:`configure_torch_threads`
NUM_THREADS_ENV = "SKIPENV_NUM_THREADS"

_DEFAULT_AT_IMPORT = torch.get_num_threads()
_configured: int | None = None  # the count this module set last (to tell our own setting from a user's)
_by_load: int | None = None  # rule 4's count, computed from the load the first time it applies


def _available_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return max(1, os.cpu_count() or 1)


def _load_average() -> float:
    """The 1-minute load average (runnable processes, averaged over all cores' run queue), 0.0 if unavailable."""
    try:
        return max(0.0, float(os.getloadavg()[0]))
    except (AttributeError, OSError):  # pragma: no cover - Windows
        return 0.0


def default_num_threads() -> int | None:
    """The intra-op thread count skipenv would set in this process, or ``None`` if it leaves PyTorch alone.

    Returns:
        A positive int (rules 1, 3, 4 of the module docstring) or ``None`` (rule 2). Rule 4 reads the
        machine's load the first time it applies in a process and returns that same count afterwards.

    Raises:
        ValueError: ``SKIPENV_NUM_THREADS`` is set but is not a positive integer.
    """
    raw = os.environ.get(NUM_THREADS_ENV, "").strip()
    if raw:
        try:
            n = int(raw)
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"{NUM_THREADS_ENV}={raw!r} is not a positive integer; set it to the number of PyTorch "
                             f"threads per process (e.g. 1) or unset it for skipenv's default")
        return n
    if os.environ.get("OMP_NUM_THREADS") or os.environ.get("MKL_NUM_THREADS"):
        return None
    current = torch.get_num_threads()
    if current != _DEFAULT_AT_IMPORT and current != _configured:
        return None  # torch.set_num_threads was called by the user
    if multiprocessing.parent_process() is not None:
        return 1
    global _by_load
    if _by_load is None:  # read the load once: later, this process's own threads are part of it
        usable = max(1, min(_available_cpus(), _DEFAULT_AT_IMPORT))
        idle = (os.cpu_count() or usable) - round(_load_average())  # cores not kept busy by running processes
        _by_load = max(1, min(usable, idle))
    return _by_load


def configure_torch_threads() -> int:
    """Apply :func:`default_num_threads` with :func:`torch.set_num_threads` (when it is not ``None``).

    Returns:
        The number of intra-op threads PyTorch uses afterwards.

    Raises:
        ValueError: a bad ``SKIPENV_NUM_THREADS`` (see :func:`default_num_threads`).
    """
    global _configured
    n = default_num_threads()
    if n is not None and n != torch.get_num_threads():
        torch.set_num_threads(n)
    if n is not None:
        _configured = n
    return torch.get_num_threads()
