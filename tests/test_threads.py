"""Default PyTorch thread count for processes running skipenv envs (skipenv.util.threads)."""

from __future__ import annotations

import multiprocessing
import os

import pytest
import torch

from skipenv.util import threads


@pytest.fixture
def clean_env(monkeypatch):
    for var in (threads.NUM_THREADS_ENV, "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "_DEFAULT_AT_IMPORT", before)
    monkeypatch.setattr(threads, "_by_load", None)
    monkeypatch.setattr(threads, "_configured", None)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))  # an idle machine unless a test says otherwise
    yield monkeypatch
    torch.set_num_threads(before)


def test_in_process_env_gets_the_available_cores(clean_env):
    torch.set_num_threads(4)  # as if torch's default were 4 threads
    clean_env.setattr(threads, "_DEFAULT_AT_IMPORT", 4)
    expected = min(len(os.sched_getaffinity(0)), 4)
    assert threads.default_num_threads() == expected
    assert threads.configure_torch_threads() == expected


@pytest.mark.parametrize("cpu_count, usable, load, expected", [
    (2, 2, 0.2, 2),    # idle 2-core machine: both cores
    (2, 2, 1.4, 1),    # one core busy elsewhere: 2 - round(1.4) = 1
    (2, 2, 5.0, 1),    # oversubscribed: never fewer than 1
    (8, 8, 2.6, 5),    # 8 - round(2.6) = 5
    (16, 4, 3.0, 4),   # 4-core affinity mask on a 16-core machine with 13 idle cores: the 4 usable ones
    (16, 4, 14.0, 2),  # 16 - 14 = 2 idle cores on the machine
])
def test_in_process_default_leaves_busy_cores_to_others(clean_env, cpu_count, usable, load, expected):
    torch.set_num_threads(64)  # as if torch's default were 64 threads (not a cap here)
    clean_env.setattr(threads, "_DEFAULT_AT_IMPORT", 64)
    clean_env.setattr(threads, "_available_cpus", lambda: usable)
    clean_env.setattr(os, "cpu_count", lambda: cpu_count)
    clean_env.setattr(os, "getloadavg", lambda: (load, 0.0, 0.0))
    assert threads.default_num_threads() == expected
    assert threads.configure_torch_threads() == expected == torch.get_num_threads()
    # the load is read once per process: later, this process's own threads are part of it
    clean_env.setattr(os, "getloadavg", lambda: (load + 8.0, 0.0, 0.0))
    assert threads.default_num_threads() == expected


def test_no_load_average_counts_as_idle(clean_env):
    def unavailable():
        raise OSError("no load average")

    torch.set_num_threads(2)
    clean_env.setattr(threads, "_DEFAULT_AT_IMPORT", 2)
    clean_env.setattr(threads, "_available_cpus", lambda: 2)
    clean_env.setattr(os, "cpu_count", lambda: 2)
    clean_env.setattr(os, "getloadavg", unavailable)
    assert threads.default_num_threads() == 2


def test_override_and_bad_override(clean_env):
    clean_env.setenv(threads.NUM_THREADS_ENV, "3")
    assert threads.configure_torch_threads() == 3 == torch.get_num_threads()
    clean_env.setenv(threads.NUM_THREADS_ENV, "3")  # our own setting is not mistaken for the user's
    assert threads.default_num_threads() == 3
    for bad in ("0", "-2", "two", "1.5"):
        clean_env.setenv(threads.NUM_THREADS_ENV, bad)
        with pytest.raises(ValueError, match=f"{threads.NUM_THREADS_ENV}='{bad}'"):
            threads.configure_torch_threads()


def test_user_choice_is_respected(clean_env):
    clean_env.setenv("OMP_NUM_THREADS", "1")
    assert threads.default_num_threads() is None
    clean_env.delenv("OMP_NUM_THREADS")
    torch.set_num_threads(max(1, threads._DEFAULT_AT_IMPORT + 1))  # the user called torch.set_num_threads
    assert threads.default_num_threads() is None
    assert threads.configure_torch_threads() == threads._DEFAULT_AT_IMPORT + 1


def _child(queue):
    for var in (threads.NUM_THREADS_ENV, "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.pop(var, None)
    torch.set_num_threads(4)  # as if torch's default were 4 threads: an in-process env would keep min(cores, 4)
    threads._DEFAULT_AT_IMPORT = 4
    queue.put((threads.default_num_threads(), threads.configure_torch_threads(), torch.get_num_threads()))


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one core: 1 thread is also the in-process default")
def test_vector_env_worker_process_gets_one_thread():
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue,))
    proc.start()
    got = queue.get(timeout=60)
    proc.join(timeout=60)
    assert got == (1, 1, 1)
