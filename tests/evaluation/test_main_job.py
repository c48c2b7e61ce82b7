"""``skipenv train``'s printed table under each formulation, its up-front refusals (layerwise id, CUDA without a
GPU, a warm start without menu documents), a split smaller than asked, and the phase times in summary.json."""

from __future__ import annotations

import json

import pandas as pd
import pytest


def _summary():
    return pd.DataFrame({"policy": ["ppo-bc", "skip-nothing", "random:0.5"],
                         "quality": [0.95, 0.97, 0.50], "quality_full": [0.9575, 0.97, 0.97],
                         "constraint_satisfied": [0.4, 1.0, 0.0], "flops_saved": [0.12, 0.0, 0.5],
                         "reward_mean": [-0.3, 0.0, -1.0], "reward_std": [0.5, 0.0, 0.0]})


def test_format_table_expected_shows_mean_loss_against_tau():
    from skipenv.evaluation.main_job import format_table

    text = format_table(_summary(), "probability", "expected", 0.01)
    lines = text.splitlines()
    head = lines[0]
    assert "mean quality loss" in head and "mean loss <= tau (0.01)" in head and "FLOPs saved" in head
    assert "per-input ok" in head and "per-input reward" in head
    assert "reward mean" not in head and "constraint ok" not in head
    rows = {ln.split()[0]: ln.split() for ln in lines[1:]}
    # ppo-bc: loss 0.9575 - 0.95 = 0.0075 <= 0.01; random: 0.47 > 0.01
    assert rows["ppo-bc"][1:5] == ["0.950", "0.0075", "yes", "0.120"]
    assert rows["random:0.5"][1:5] == ["0.500", "0.4700", "no", "0.500"]
    assert rows["skip-nothing"][2:4] == ["0.0000", "yes"]
    # v0's table is unchanged: the lexicographic reward and the per-input rate under their old names
    v0 = format_table(_summary(), "agreement")
    assert "reward mean" in v0 and "constraint ok" in v0 and "per-input" not in v0
    with pytest.raises(ValueError, match="needs tau"):
        format_table(_summary(), "probability", "expected")


@pytest.mark.parametrize("kwargs, match", [
    (dict(env_id="SwitchDec-XSum-Layerwise-v0"), "one-shot.*without '-Layerwise'"),
    (dict(static_examples=0), r"got static_examples=0 \(--static-examples\).*static_examples >= 4.*--algo ppo"),
    (dict(train_examples=2), r"got train_examples=2 \(--train-examples"),
])
def test_main_job_refusals_name_the_fix(kwargs, match, tmp_path):
    from skipenv.evaluation.main_job import run_main_job

    with pytest.raises(ValueError, match=match) as err:
        run_main_job(tmp_path / "never", model="no-such-model-is-loaded", **kwargs)
    if "static_examples" not in kwargs:  # the user never passed it: no made-up static_examples value
        assert "static_examples=" not in str(err.value)
    assert not (tmp_path / "never").exists()


def test_cuda_device_without_a_gpu_is_refused_up_front(monkeypatch, tmp_path, capsys):
    import torch

    from skipenv.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rc = main(["train", "--device", "cuda", "--out", str(tmp_path / "never"), "--model", "no-such-model"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "skipenv train: error: device 'cuda': torch finds no CUDA GPU on this machine; use --device cpu" in err
    assert not (tmp_path / "never").exists()


def test_small_split_is_reported_and_phase_times_are_separate(tiny_model_dir, tmp_path, capsys):
    from skipenv.tasks.sources import split_of
    from skipenv.evaluation.main_job import format_table, run_main_job

    ids = [f"d{i}" for i in range(200)]
    train = [i for i in ids if split_of(i) == "train"][:6]
    test = [i for i in ids if split_of(i) == "test"][:3]
    words = "the council said the new bridge over the river would open next spring after delays".split()
    rows = [{"id": d, "document": " ".join(words[k % 5:] + words[:k % 5]).capitalize() + ".",
             "summary": " ".join(words[:5]) + "."} for k, d in enumerate(train + test)]
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    summary = run_main_job(out, total_timesteps=8, train_examples=50, test_examples=3, model=tiny_model_dir,
                           env_kwargs=dict(max_new_tokens=6, max_input_tokens=96, disk_cache=False,
                                           task_source=str(data)), progress_bar=False)
    err = capsys.readouterr().err
    assert "the train split holds 6 documents, fewer than the 50 asked (--train-examples): using 6" in err
    assert "[1/4] full-model references of 6 train documents" in err
    assert "the probe's menu on 6 train and 3 test documents" in err
    meta = json.loads((out / "summary.json").read_text())
    assert (meta["train_examples"], meta["test_examples"]) == (6, 3)
    assert meta["menu_seconds"] > 0 and meta["train_seconds"] > 0
    assert meta["menu_seconds"] + meta["train_seconds"] <= meta["total_seconds"] + 0.2
    # the printed table under v1: mean loss per policy, recomputed from episodes.csv
    episodes = pd.read_csv(out / "episodes.csv", float_precision="round_trip")
    text = format_table(summary, meta["quality"], meta["formulation"], meta["tau"])
    names = sorted(summary["policy"], key=len, reverse=True)
    lines = text.splitlines()[1:]
    assert len(lines) == len(names) == 4
    for line in lines:
        name = next(n for n in names if line.strip().startswith(n))
        e = episodes[episodes["policy"] == name]
        loss = float((e["quality_full"] - e["quality"]).mean())
        cells = line.strip()[len(name):].split()
        assert cells[1:4] == [f"{loss:.4f}", "yes" if loss <= 0.01 + 1e-12 else "no",
                              f"{e['flops_saved'].mean():.3f}"], line


def _run_folder(tmp_path, env_id="SwitchDec-XSum-v1", name="run"):
    run = tmp_path / name
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"env_id": env_id, "algo": "ppo-bc"}))
    with __import__("zipfile").ZipFile(run / "policy.zip", "w") as z: z.writestr("data", "{}")  # an SB3-shaped zip
    return run


def test_env_for_policies_reads_the_run_folder(tmp_path, capsys):
    from skipenv.cli.args import DefaultEnv, env_for_policies

    run = _run_folder(tmp_path)
    default = DefaultEnv("SwitchDec-XSum-v0")
    for spec in (str(run / "policy.zip"), f"sb3:ppo:{run / 'policy.zip'}"):
        assert env_for_policies(default, ["skip-nothing", spec], "leaderboard") == "SwitchDec-XSum-v1"
        assert (f"skipenv leaderboard: --env not given: using SwitchDec-XSum-v1, the env_id in "
                f"{run / 'summary.json'}") in capsys.readouterr().err
    # a typed --env wins, baselines and folders without summary.json keep the default, silently
    assert env_for_policies("SwitchDec-XSum-v0", [str(run / "policy.zip")], "leaderboard") == "SwitchDec-XSum-v0"
    (tmp_path / "bare").mkdir()
    assert env_for_policies(default, ["random:0.5", str(tmp_path / "bare" / "p.zip")], "generate") == \
        "SwitchDec-XSum-v0"
    assert capsys.readouterr().err == ""
    other = _run_folder(tmp_path, "SwitchDec-XSum-v0", "run0")
    with pytest.raises(ValueError, match="different envs.*pass --env"):
        env_for_policies(default, [str(run / "policy.zip"), str(other / "policy.zip")], "leaderboard")


def test_cli_commands_score_a_policy_on_its_training_env(tmp_path, monkeypatch, capsys):
    """leaderboard, generate and dataset record hand the run folder's env id to the code that builds the env."""
    import skipenv.evaluation.harness as benchmark
    import skipenv.policies.deploy as generate
    import skipenv.evaluation.offline as offline
    from skipenv.cli import main

    seen = []

    class Stop(ValueError):
        pass

    def capture(*args, env_id=None, **kwargs):
        seen.append(env_id if env_id is not None else args[0])
        raise Stop("stopped by the test")

    monkeypatch.setattr(benchmark, "leaderboard", capture)
    monkeypatch.setattr(generate, "PolicyGenerator", capture)
    monkeypatch.setattr(offline, "record_dataset", capture)
    policy = str(_run_folder(tmp_path) / "policy.zip")
    assert main(["leaderboard", policy, "--out", str(tmp_path / "lb")]) == 1
    assert main(["generate", "--policy", policy, "--text", "A short text."]) == 1
    assert main(["dataset", "record", "--policy", policy, "--episodes", "1", "--out", "x"]) == 1
    assert main(["leaderboard", policy, "--env", "SwitchDec-XSum-v0", "--out", str(tmp_path / "lb")]) == 1
    assert seen == ["SwitchDec-XSum-v1"] * 3 + ["SwitchDec-XSum-v0"]
    assert capsys.readouterr().err.count("--env not given: using SwitchDec-XSum-v1") == 3
