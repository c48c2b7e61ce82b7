"""Fuzz of the command line's argument surface (issue 20): random bad integers, floats, JSON, paths and text for the
options of every subcommand (probe, train, generate, dataset, leaderboard, table). Whatever the input, ``skipenv``
shows no Python traceback: it exits 0 (the input was valid) or non-zero with one error line.

``skipenv.cli.main`` runs in-process with the model load replaced by an ``OSError`` (a user error: one line), so a
valid input stops there cheaply and an input that slipped past the checks still cannot load anything.
"""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import skipenv.loading
from skipenv.cli import main

ENV_KEYS = ["model", "max_input_tokens", "max_new_tokens", "tau", "quality", "observation", "token_segments",
            "reward_mode", "cost_weight", "num_examples", "split", "device", "dtype", "formulation",
            "formulation_kwargs", "segment_boundaries", "disk_cache", "lru_size", "layer_block", "candidates",
            "task", "generator", "bogus"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6)
env_kwargs_json = st.one_of(
    st.dictionaries(st.sampled_from(ENV_KEYS), json_values, max_size=3).map(json.dumps),
    json_values.map(json.dumps),
    st.text(max_size=12))
ints = st.one_of(st.integers(-10**20, 10**20).map(str), st.sampled_from(["", "1.5", "0x10", "1e3", " 3", "-0"]))
floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr),
                   st.sampled_from(["nan", "inf", "-inf", "1e400", "", "x"]))
texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=16)

#: subcommand -> (a valid base command line, {option: kind of value})
SURFACE = {
    "probe": (["probe", "--train-docs", "4", "--test-docs", "2", "--no-progress"],
              {"--train-docs": "int", "--test-docs": "int", "--tau": "float", "--quality": "text",
               "--observation": "text", "--plan": "text", "--learning-curve": "int", "--env-kwargs": "json",
               "--observations": "text", "--seed": "int", "--env": "text", "--out": "path"}),
    "train": (["train", "--train-examples", "4", "--test-examples", "2", "--total-timesteps", "4", "--no-progress"],
              {"--total-timesteps": "int", "--train-examples": "int", "--test-examples": "int",
               "--static-examples": "int", "--seed": "int", "--device": "text", "--model": "path", "--env": "text",
               "--algo": "text", "--out": "path"}),
    "generate": (["generate", "--policy", "skip-nothing", "--text", "The council met."],
                 {"--policy": "policy", "--env": "text", "--question": "text", "--device": "text",
                  "--env-kwargs": "json", "--out": "path"}),
    "generate-jsonl": (["generate", "--policy", "lead:4"],
                       {"--jsonl": "path", "--file": "path"}),
    "dataset record": (["dataset", "record", "--policy", "random:0.5", "--episodes", "2", "--out", "fz",
                        "--no-progress"],
                       {"--policy": "policy", "--episodes": "int", "--seed": "int", "--split": "text",
                        "--env-kwargs": "json", "--env": "text", "--root": "path", "--out": "text"}),
    "dataset evaluate": (["dataset", "evaluate", "--dataset", "fz", "--policy", "skip-nothing", "--no-progress"],
                         {"--dataset": "text", "--policy": "policy", "--seed": "int", "--on-policy-samples": "int",
                          "--root": "path"}),
    "leaderboard": (["leaderboard", "skip-nothing", "--no-progress"],
                    {"--episodes": "int", "--seeds": "int", "--split": "text", "--device": "text",
                     "--env-kwargs": "json", "--env": "text", "--extra-quality": "text", "--out": "path"}),
    "table validate": (["table", "validate"],
                       {"--samples": "int", "--seed": "int", "--tolerance": "float", "table": "path",
                        "--model": "path"}),
    "table build": (["table", "build", "fz-table"],
                    {"--max-input-tokens": "int", "--max-new-tokens": "int", "--token-segments": "int",
                     "--limit": "int", "--workers": "int", "--grammar": "path", "--signals": "text",
                     "--splits": "text", "--env-id": "text"}),
}


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """A working folder with files of every kind a path option may be given, and no model load."""
    import numpy as np

    def refuse(*args, **kwargs):
        raise OSError("model loading is disabled in this test")

    monkeypatch.setattr(skipenv.loading, "load_generator", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    monkeypatch.chdir(tmp_path)
    junk = np.random.default_rng(0).bytes(64)
    for name in ("x.zip", "x.pt", "x.jsonl", "x.json", "x.txt"):
        (tmp_path / name).write_bytes(junk)
    (tmp_path / "empty.zip").write_bytes(b"")
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "list.jsonl").write_text("[1, 2]\n")
    (tmp_path / "num.jsonl").write_text('{"document": 5}\n')
    (tmp_path / "grammar.json").write_text('{"factors": 3}')
    (tmp_path / "dir.zip").mkdir()
    return tmp_path


paths = st.sampled_from(["x.zip", "x.pt", "x.jsonl", "x.json", "x.txt", "empty.zip", "empty.jsonl", "list.jsonl",
                         "num.jsonl", "grammar.json", "dir.zip", "missing.zip", "missing/dir", ".", "x.txt/sub",
                         "bad\x00name"])
policies = st.one_of(paths, st.sampled_from(["oracle", "oracle:x", "random:2", "random:nan", "lead:-1", "sb3:ppo:",
                                             "sb3:ppo:x.zip", "pg:x.pt", "calibrated:1e9", "every-other:none",
                                             "skip-nothing:1", ""]), texts)
VALUES = {"int": ints, "float": floats, "json": env_kwargs_json, "path": st.one_of(paths, texts), "text": texts,
          "policy": policies}


@st.composite
def command_lines(draw):
    name = draw(st.sampled_from(sorted(SURFACE)))
    base, options = SURFACE[name]
    argv = list(base)
    for option in draw(st.lists(st.sampled_from(sorted(options)), min_size=1, max_size=2, unique=True)):
        kind = options[option] if draw(st.integers(0, 3)) else draw(st.sampled_from(sorted(VALUES)))
        value = draw(VALUES[kind])
        argv += [value] if not option.startswith("-") else [f"{option}={value}"]
    if name == "generate-jsonl" and not any(a.startswith(("--jsonl", "--file")) for a in argv):
        argv += ["--jsonl=x.jsonl"]
    return argv


@settings(max_examples=int(os.environ.get("SKIPENV_FUZZ_EXAMPLES", 120)), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(argv=command_lines())
def test_no_traceback_one_error_line(sandbox, capsys, argv):
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's usage errors
        rc = e.code
    captured = capsys.readouterr()
    err = captured.err
    assert "Traceback" not in err, (argv, err)
    if rc:
        errors = [line for line in err.splitlines()
                  if line.startswith("skipenv ") and not line.startswith("skipenv train: ")
                  or line.startswith("skipenv train: error:")]
        assert len(errors) == 1, (argv, err)
        assert isinstance(rc, int) and rc in (1, 2), (argv, rc)


def test_the_fuzz_reaches_the_model_load(sandbox, capsys):
    """The sandbox's base command lines are valid: they stop only at the (refused) model load."""
    for name in ("probe", "generate", "leaderboard"):
        assert main(SURFACE[name][0]) == 1
        assert "model loading is disabled in this test" in capsys.readouterr().err
