"""The main job as named steps (:mod:`skipenv.evaluation.main_job`: :func:`check_args`, then ``MAIN_JOB_STEPS``):
two runs with the same seed and thread count, each in its own process as ``skipenv train`` runs, on a tiny
random-weight Llama saved with ``save_pretrained``, write the same ``summary.json`` numbers and the same episodes
(issue 19: "the main job's output is the same"); :func:`check_args` resolves the id, formulation, learner and menu
size and creates nothing.

Why two processes: within one process the second run finds the first one's in-memory caches (the generator's
prefix store, the outcome memo) and scores some episodes one by one that the first scored in a padded batch;
batched scoring matches row-by-row scoring within 1e-4 (``tests/generators/test_batched.py``), not bit for bit,
so the training trajectories part."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from skipenv.evaluation.main_job import check_args

ROOT = Path(__file__).resolve().parents[2]

#: summary.json's wall-clock times (seconds): the only numbers that may differ between two runs
TIMES = ("menu_seconds", "train_seconds", "total_seconds")

JOB = """
import sys
from skipenv.evaluation.main_job import run_main_job
run_main_job(sys.argv[1], total_timesteps=8, train_examples=4, test_examples=2, model=sys.argv[2], seed=3,
             env_kwargs=dict(max_new_tokens=4, max_input_tokens=96, disk_cache=False), progress_bar=False)
"""


def _run(out: Path, model_dir: str):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SKIPENV_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", JOB, str(out), model_dir], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "torch uses 1 thread(s)" in proc.stderr
    meta = json.loads((out / "summary.json").read_text())
    return meta, pd.read_csv(out / "episodes.csv", float_precision="round_trip")


@pytest.mark.slow  # two processes, each loading torch and transformers: ~1 min on 2 busy cores
def test_main_job_output_is_the_same_for_the_same_seed_and_threads(tiny_model_dir, tmp_path):
    (a, ea), (b, eb) = _run(tmp_path / "a", tiny_model_dir), _run(tmp_path / "b", tiny_model_dir)
    for key in TIMES:
        assert isinstance(a.pop(key), float) and isinstance(b.pop(key), float)
    # each run has its own id (the RUNNING marker's), so two runs differ there and only there
    assert a.pop("run_id") != b.pop("run_id")
    # every step ran: the menu (best static), the warm start (initial multiplier) and the expected margins
    assert (a["env_id"], a["formulation"], a["algo"]) == ("SwitchDec-XSum-v1", "expected", "ppo-bc")
    assert {"best_static", "lagrange_multiplier", "expected_constraint"} <= set(a)
    assert a == b  # exact: same floats, same margins, same bootstrap intervals
    pd.testing.assert_frame_equal(ea, eb)
    # the numbers are the env's: skip nothing reproduces the full model, so its quality loss is exactly 0
    nothing = ea[ea["policy"] == "skip-nothing"]
    assert len(nothing) == 2 and (nothing["quality"] == nothing["quality_full"]).all()
    assert sorted(ea["policy"].unique()) == sorted(row["policy"] for row in a["summary"])


def test_check_args_resolves_the_job_and_creates_nothing(tmp_path):
    job = check_args(tmp_path / "never", env_id="SwitchDec-XSum-v1", train_examples=6, model="no-such-model")
    assert (job.env_id, job.formulation, job.algo) == ("SwitchDec-XSum-v1", "expected", "ppo-bc")
    # the unversioned id is v2 (skip scores), which the job's 0 / 1-bit steps cannot drive: refused up front
    for env_id, kw in (("SwitchDec-XSum", None), ("SwitchDec-XSum-v1", {"skip_threshold": 2.0})):
        with pytest.raises(ValueError, match="real-valued skip scores.*SwitchDec-XSum-v1"):
            check_args(tmp_path / "never", env_id=env_id, env_kwargs=kw, model="no-such-model")
    assert (job.static_examples, job.n_menu, job.train_env, job.out) == (6, 6, None, None)
    job = check_args(tmp_path / "never", env_id="SwitchDec-XSum-v0", static_examples=0, model="no-such-model")
    assert (job.formulation, job.algo, job.n_menu) == ("per_input", "ppo", 0)
    assert not (tmp_path / "never").exists()
