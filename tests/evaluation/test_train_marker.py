"""``skipenv train`` never leaves a folder that mixes two runs (issue 20): a run marks the folder (``RUNNING``),
removes an earlier or interrupted run's outputs, writes ``summary.json`` with its run id last, and removes the
marker; an interrupted run leaves the marker and no ``summary.json``."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")

KW = dict(max_new_tokens=3, max_input_tokens=96, disk_cache=False)


def _run(out, model_dir):
    from skipenv.evaluation.main_job import run_main_job

    return run_main_job(out, algo="ppo", static_examples=0, total_timesteps=4, train_examples=4, test_examples=2,
                        model=model_dir, env_id="SwitchDec-XSum-v0", progress_bar=False, env_kwargs=KW)


def test_an_interrupted_run_is_marked_and_a_rerun_replaces_its_outputs(tmp_path, monkeypatch, capsys):
    import skipenv.evaluation.plots as plots
    from _tiny_local import write_tiny_assets
    from skipenv.evaluation.main_job import RUN_OUTPUTS, RUNNING_MARKER

    model_dir, _ = write_tiny_assets(tmp_path)
    out = tmp_path / "run"
    out.mkdir()
    # an earlier run's outputs, which this run's configuration would not overwrite: a menu and old TensorBoard logs
    (out / "menu").mkdir()
    (out / "menu" / "outcomes.csv").write_text("old")
    (out / "tensorboard" / "PPO_1").mkdir(parents=True)
    (out / "tensorboard" / "PPO_1" / "old.tfevents").write_text("old")
    (out / "summary.json").write_text(json.dumps({"env_id": "SwitchDec-XSum-v1", "algo": "ppo-bc"}))
    (out / "notes.txt").write_text("mine")  # not the job's: kept

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt  # as Ctrl-C at the last step

    monkeypatch.setattr(plots, "plot_pareto", interrupt)
    with pytest.raises(KeyboardInterrupt):
        _run(out, model_dir)
    marker = json.loads((out / RUNNING_MARKER).read_text())
    assert len(marker["run_id"]) == 12 and marker["pid"] > 0
    assert not (out / "summary.json").exists()  # neither the old run's nor a partial new one
    assert not (out / "menu").exists() and not (out / "tensorboard" / "PPO_1" / "old.tfevents").exists()
    assert (out / "policy.zip").exists() and (out / "notes.txt").read_text() == "mine"
    assert "held the outputs of an earlier run (summary.json, menu, tensorboard): removed" in capsys.readouterr().err

    monkeypatch.undo()
    _run(out, model_dir)
    err = capsys.readouterr().err
    assert "held the outputs of an interrupted run" in err
    assert not (out / RUNNING_MARKER).exists()
    meta = json.loads((out / "summary.json").read_text())
    assert len(meta["run_id"]) == 12 and meta["run_id"] != marker["run_id"] and meta["env_id"] == "SwitchDec-XSum-v0"
    written = {p.name for p in out.iterdir()}
    assert written <= set(RUN_OUTPUTS) | {"notes.txt"}
    assert {"policy.zip", "summary.json", "summary.csv", "episodes.csv", "monitor.csv"} <= written


def test_a_marker_of_a_live_run_is_refused_and_one_of_a_dead_run_replaced(tmp_path):
    """A second ``skipenv train`` into the folder of a run that is still writing would delete that run's outputs
    under it: a ``RUNNING`` marker naming a live process of this host is refused (outputs untouched); one naming a
    process that has exited (an interrupted run) is replaced."""
    import os
    import socket
    import subprocess
    import sys

    from skipenv.evaluation.main_job import RUNNING_MARKER, _start_run

    out = tmp_path / "run"
    out.mkdir()
    (out / "policy.zip").write_text("the other run's")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / RUNNING_MARKER).write_text(json.dumps({"run_id": "other", "pid": live.pid,
                                                      "host": socket.gethostname(), "started": "now"}))
        with pytest.raises(ValueError, match=f"being written by another run \\(pid {live.pid}"):
            _start_run(out)
        assert (out / "policy.zip").read_text() == "the other run's"
    finally:
        live.kill()
        live.wait()
    run_id = _start_run(out)  # the process is gone: an interrupted run, replaced
    marker = json.loads((out / RUNNING_MARKER).read_text())
    assert marker["run_id"] == run_id and marker["pid"] == os.getpid() and not (out / "policy.zip").exists()
