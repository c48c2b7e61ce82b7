"""The ``skipenv`` command line: cheap help (no torch / pandas), defaults and help text on every option, progress that
stays readable in log files, the main job's thread / load report and its labelled training bar."""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from skipenv.cli import SUBCOMMANDS, build_parser, main
from skipenv.util.progress import LineWriter, log_friendly_progress

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "pandas", "transformers", "stable_baselines3", "matplotlib")


@pytest.mark.parametrize("argv", [[], ["train"], ["leaderboard"], ["download"]], ids=lambda a: " ".join(a) or "top")
def test_help_imports_no_heavy_module(argv):
    """``python -m skipenv.cli [SUB] --help`` as a user runs it: the import log (``-X importtime``) of the process
    lists none of torch, pandas, transformers, SB3, matplotlib."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "skipenv.cli", *argv, "--help"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage: skipenv" in proc.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time")}
    assert "skipenv" in imported  # the log is real
    loaded = sorted(m for m in imported if m.split(".")[0] in HEAVY)
    assert not loaded, loaded


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_option_has_help_and_help_shows_defaults(capsys):
    subs = _subparsers(build_parser())
    assert set(subs) == set(SUBCOMMANDS)
    todo = list(subs.items())
    while todo:  # nested subcommands too (``skipenv dataset record``)
        name, p = todo.pop()
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                todo += [(f"{name} {n}", q) for n, q in a.choices.items()]
            if isinstance(a, argparse._HelpAction) or a.help == argparse.SUPPRESS:
                continue
            assert a.help, f"skipenv {name}: {a.option_strings or a.dest} has no help text"
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for default in ("(default: 384)", "(default: 96)", "(default: 40)", "(default: 0)", "(default: cpu)",
                    "(default: smollm2-135m-instruct)", "(default: SwitchDec-XSum-v1)", "(default: runs/ppo-xsum)"):
        assert default in text, default
    with pytest.raises(SystemExit):
        main(["leaderboard", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for needle in ("(default: [0, 1, 2])", "(default: 20)", "(default: test)", "(default: runs/leaderboard)",
                   "episodes.csv", "summary.csv", "pareto.png", "random:RATE"):
        assert needle in text, needle


def test_help_shows_each_default_once():
    """The formatter appends ``(default: ...)``, so no option's help text writes its own (it showed twice)."""
    import re

    todo = list(_subparsers(build_parser()).items())
    while todo:
        name, p = todo.pop()
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                todo += [(f"{name} {n}", q) for n, q in a.choices.items()]
        text = " ".join(p.format_help().split())
        twice = re.findall(r"(\(default: [^()]*\))[^()]*\1", text)
        assert not twice, f"skipenv {name} --help: {twice}"
        if name == "generate":
            assert text.count("(default: SwitchDec-XSum-v1)") == 1 and text.count("(default: cpu)") == 1


def test_every_tool_defaults_to_the_same_id():
    """skipenv train / probe / leaderboard / generate / dataset record, the agents and compare_algorithms.py all
    default to DEFAULT_ENV_ID, SwitchDec-XSum-v1 (pinned: 0 / 1 bits; gym.make("SwitchDec-XSum") picks the latest
    version, v2, whose actions are skip scores), and the scripts' --help shows it."""
    import gymnasium as gym

    from skipenv.envs.registration import DEFAULT_ENV_ID
    from skipenv.envs.registration import resolve_env_id

    assert DEFAULT_ENV_ID == "SwitchDec-XSum-v1" and resolve_env_id("SwitchDec-XSum") == "SwitchDec-XSum-v2"
    subs = _subparsers(build_parser())
    record = next(a for a in subs["dataset"]._actions if isinstance(a, argparse._SubParsersAction)).choices["record"]
    for name, p in [*((n, subs[n]) for n in ("train", "probe", "leaderboard", "generate")), ("dataset record", record)]:
        env = next(a for a in p._actions if "--env" in a.option_strings)
        assert env.default == DEFAULT_ENV_ID, name
    assert gym.spec(DEFAULT_ENV_ID).kwargs["formulation"] == "expected"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for script in ("agents/ppo.py", "agents/baselines.py", "agents/constrained_pg.py", "agents/group_pg.py",
                   "benchmarks/compare_algorithms.py"):
        proc = subprocess.run([sys.executable, str(ROOT / script), "--help"], env=env, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert f"(default: {DEFAULT_ENV_ID})" in " ".join(proc.stdout.split()), script


def test_line_writer_throttles_redraws_per_bar():
    out, now = io.StringIO(), [0.0]
    w = LineWriter(out, interval_s=30, clock=lambda: now[0])
    w.write("\rtrain ppo:   0%| | 0/256")
    for t, n in ((1, 1), (10, 10), (31, 40), (40, 50)):
        now[0] = t
        w.write(f"\rtrain ppo:  {n}%| | {n}/256")
        w.write(f"\reval ppo:  {n}%| | {n}/20")
    now[0] = 41
    w.write("\rtrain ppo: 100%|\u2588\u2588| 256/256")
    w.write("\r" + " " * 40 + "\r")  # a leave=False bar clearing itself
    w.write("a warning line\n")
    assert out.getvalue().splitlines() == [
        "train ppo:   0%| | 0/256", "eval ppo:  1%| | 1/20", "train ppo:  40%| | 40/256", "eval ppo:  40%| | 40/20",
        "train ppo: 100%|##| 256/256", "a warning line"]


def test_log_friendly_progress_only_without_a_terminal(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    with log_friendly_progress(5) as active:
        assert active and isinstance(sys.stderr, LineWriter)
    assert isinstance(sys.stderr, io.StringIO)

    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stderr", Tty())
    with log_friendly_progress() as active:
        assert not active and isinstance(sys.stderr, Tty)


def test_threads_line_and_oversubscription_warning(monkeypatch):
    import torch

    from skipenv.evaluation import main_job as train

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (1.0, 1.0, 1.0))
    line, warning = train._threads_line()
    assert f"torch uses {torch.get_num_threads()} thread(s) (OMP_NUM_THREADS=3)" in line and "2 CPU core(s)" in line
    assert warning is None
    monkeypatch.setattr(os, "getloadavg", lambda: (7.5, 7.0, 6.0))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    _, warning = train._threads_line()
    assert "7.5" in warning and "OMP_NUM_THREADS=1" in warning
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    _, warning = train._threads_line()
    assert "7.5" in warning and "already uses one thread" in warning
    # while the job runs, its own threads are in the load: 2 threads at load 2.04 on 2 cores is this job alone
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (2.04, 1.5, 1.0))
    assert train._threads_line(running=True)[1] is None
    assert train._threads_line()[1] is not None  # before the job starts, the same load is other processes'
    monkeypatch.setattr(os, "getloadavg", lambda: (3.2, 2.0, 1.0))  # another process on top: warn
    assert "3.2" in train._threads_line(running=True)[1]


def test_status_line_is_not_glued_to_a_live_bar(capsys):
    """The main job's status lines (the time estimate) go through tqdm.write: on a line of their own while a bar is
    drawn, and the bar is redrawn after them."""
    from tqdm import tqdm

    from skipenv.evaluation import main_job as train

    bar = tqdm(total=10, desc="train ppo", unit="episode", file=sys.stderr)
    bar.update(3)
    train._say("skipenv train: estimated time left ~1 min")
    bar.close()
    pieces = [p.strip() for p in capsys.readouterr().err.replace("\r", "\n").split("\n")]
    assert "skipenv train: estimated time left ~1 min" in pieces
    assert any(p.startswith("train ppo:") and "3/10" in p for p in pieces[pieces.index(
        "skipenv train: estimated time left ~1 min"):])


def test_training_bar_is_labelled_and_reports_early_speed(capsys):
    """The callback of the main job on a plain Gymnasium env (PPO, 48 steps): a ``train ppo`` bar in episodes and
    one early-speed report after 8 episodes."""
    import gymnasium as gym
    from stable_baselines3 import PPO
    from stable_baselines3.common.monitor import Monitor

    from skipenv.evaluation.main_job import _TrainingProgress

    calls = []
    model = PPO("MlpPolicy", Monitor(gym.make("CartPole-v1")), n_steps=32, batch_size=16, n_epochs=1, seed=0,
                device="cpu")
    model.learn(48, callback=_TrainingProgress.make("train ppo", 48, True, lambda d, s: calls.append((d, s))))
    err = capsys.readouterr().err
    assert "train ppo" in err and "episode" in err
    assert len(calls) == 1 and calls[0][0] == 8 and calls[0][1] > 0


# ----------------------------------------------------------------------------------------------------
# moved here from the hardening campaign (tests/test_hardening.py, dissolved by issue 19)


BAD_CLI = [
    (["train", "--total-timesteps", "-5"], 2, "--total-timesteps"),
    (["train", "--train-examples", "x"], 2, "--train-examples"),
    (["train", "--env", "NoSuch-v0"], 1, "NoSuch"),
    (["leaderboard", "skip-nothing", "--episodes", "0"], 2, "--episodes"),
    (["leaderboard", "skip-nothing", "--env-kwargs", "[1]"], 2, "JSON object"),
    (["leaderboard", "skip-nothing", "--env-kwargs", "{bad"], 2, "JSON"),
    (["leaderboard", "skip-nothing", "lead:abc"], 1, "lead:abc"),
    (["leaderboard", "lead:"], 1, "lead:"),
    (["leaderboard", "random:2"], 1, "random:2"),
    (["leaderboard", "calibrated:-1"], 1, "calibrated:-1"),
    (["leaderboard", "oracle:x"], 1, "oracle:x"),
    (["leaderboard", "every-other:heads"], 1, "every-other:heads"),
    (["leaderboard", "sb3:ppo"], 1, "sb3:ppo"),
    (["leaderboard", "ppo:/nonexistent"], 1, "ppo:/nonexistent"),
    (["leaderboard", "lead:4", "skip-nothing", "lead:4"], 1, "more than once"),
    (["leaderboard", "skip-nothing", "--env", "NoSuch-v0"], 1, "NoSuch"),
    (["probe", "--train-docs", "0"], 2, "--train-docs"),
    (["probe", "--observations", "nosuch"], 1, "nosuch"),
    (["probe", "--env-kwargs", '{"num_examples": 3}'], 1, "num_examples"),
    (["probe", "--env-kwargs", '{"tau": 0.5}'], 1, "--tau"),
    (["probe", "--env-kwargs", '{"quality": "reference"}'], 1, "--quality"),
]


@pytest.mark.hardening
@pytest.mark.assets
@pytest.mark.parametrize("argv,code,named", BAD_CLI, ids=[" ".join(a) for a, _, _ in BAD_CLI])
def test_cli_bad_input_is_one_line_without_traceback(argv, code, named, tmp_path, capsys, monkeypatch):
    from skipenv import cli

    monkeypatch.delenv("SKIPENV_TRACEBACK", raising=False)
    try:
        rc = cli.main([*argv, "--out", str(tmp_path / "out")])
    except SystemExit as e:  # argparse usage errors
        rc = e.code
    err = capsys.readouterr().err
    assert rc == code
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and named in lines[0], err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.hardening
@pytest.mark.assets
def test_cli_keeps_the_traceback_of_a_bug(monkeypatch):
    """Only errors caused by the input or the machine become one line; a programming error keeps its traceback."""
    from skipenv import cli

    def broken(args):
        raise AttributeError("a bug")

    monkeypatch.delitem(cli.SUBCOMMANDS, "download")  # a Registry refuses a second entry of one name
    monkeypatch.setitem(cli.SUBCOMMANDS, "download", cli.Subcommand(lambda p: None, broken, "broken"))
    with pytest.raises(AttributeError, match="a bug"):
        cli.main(["download"])


# ----------------------------------------------------------------------------------------------------
# moved here from the v1 hardening campaign (tests/test_v1_hardening.py, dissolved by issue 19)


@pytest.mark.hardening
@pytest.mark.usefixtures("one_thread")
def test_train_cli_without_menu_does_not_claim_to_save_one(tmp_path, capsys):
    """``skipenv train --static-examples 0`` evaluates no menu: the closing line must not list menu/ as saved."""
    import json

    from _tiny_local import write_tiny_assets
    from skipenv.cli import main

    model_dir, _ = write_tiny_assets(tmp_path)
    out = tmp_path / "run"
    assert main(["train", "--algo", "ppo", "--static-examples", "0", "--total-timesteps", "4", "--train-examples",
                 "2", "--test-examples", "2", "--model", model_dir, "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    saved = next(line for line in printed.splitlines() if line.startswith("saved:"))
    assert "menu/" not in saved and not (out / "menu").exists()
    meta = json.loads((out / "summary.json").read_text())
    assert "best_static" not in meta and "expected_constraint" not in meta
    assert "probability" in printed.splitlines()[0]  # v1's quality names the table's column
