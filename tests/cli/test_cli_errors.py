"""Bad command-line input is one line on stderr and a non-zero exit, before any model loads (issue 20 M1-M6, bad
``formulation_kwargs``, bad ``--plan`` strings, bad ``--device``); every case runs ``skipenv.cli.main`` in-process with
the model load replaced by a failure, so a case that reached the model would show."""

from __future__ import annotations

import json

import pytest

import skipenv.loading
from skipenv.cli import main


class ModelLoaded(AssertionError):
    """Raised by the patched model load: the input should have been refused before."""


@pytest.fixture
def no_model_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise ModelLoaded(f"the model was loaded: {args}")

    monkeypatch.setattr(skipenv.loading, "load_generator", refuse)


def _run(argv, capsys) -> tuple[int, list[str]]:
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse usage errors
        rc = e.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, [line for line in err.splitlines() if line.startswith("skipenv ")]


def _one_line(argv, capsys, *expected, rc=1):
    code, lines = _run(argv, capsys)
    assert code == rc, lines
    assert len(lines) == 1, lines
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


MODEL = {"model": "tiny_model"}


def test_probe_unknown_env_kwarg(no_model_load, capsys, tmp_path):  # M1
    line = _one_line(["probe", "--env-kwargs", json.dumps({**MODEL, "bogus_kw": 1}), "--train-docs", "4",
                      "--test-docs", "2", "--out", str(tmp_path)], capsys,
                     "skipenv probe: error: --env-kwargs: SwitchDec-XSum-v1 takes no keyword argument 'bogus_kw'")
    assert "max_input_tokens" in line  # the accepted names are listed
    _one_line(["probe", "--env-kwargs", json.dumps({"max_input_token": 96})], capsys, "did you mean 'max_input_tokens'")


def test_train_on_the_meta_device(no_model_load, capsys, tmp_path):  # M2
    out = tmp_path / "never"
    _one_line(["train", "--model", "tiny_model", "--device", "meta", "--train-examples", "4", "--test-examples", "2",
               "--total-timesteps", "4", "--out", str(out)], capsys, "device 'meta'", "use --device cpu")
    assert not out.exists()
    _one_line(["train", "--device", "gpu0", "--out", str(out)], capsys, "'gpu0' is not a torch device")


@pytest.mark.parametrize("line, expected", [("5", "expected a JSON object"),
                                            ('{"document": 12345}', "'document' field must be a string"),
                                            ("{not json", "not valid JSON"),
                                            ('{"text": "ok", "question": 3}', "'question' field must be a string")])
def test_generate_bad_jsonl_lines(no_model_load, capsys, tmp_path, line, expected):  # M3
    path = tmp_path / "docs.jsonl"
    path.write_text('{"document": "The council met."}\n' + line + "\n")
    _one_line(["generate", "--policy", "skip-nothing", "--jsonl", str(path)], capsys, f"{path}:2:", expected)


def test_generate_a_policy_zip_of_random_bytes(no_model_load, capsys, tmp_path):  # M4
    import numpy as np

    bad = tmp_path / "x.zip"
    bad.write_bytes(np.random.default_rng(0).bytes(100))
    _one_line(["generate", "--policy", str(bad), "--text", "The council met."], capsys,
              "is not a stable-baselines3 save")
    _one_line(["dataset", "record", "--policy", str(bad), "--episodes", "2", "--out", "x", "--root", str(tmp_path)],
              capsys, "is not a stable-baselines3 save")
    _one_line(["leaderboard", "skip-nothing", str(bad), "--out", str(tmp_path / "lb")], capsys,
              "is not a stable-baselines3 save")
    # the library path gives the same clear error (no zipfile.BadZipFile)
    from skipenv.policies.spec import _sb3_class

    with pytest.raises(ValueError, match="not a stable-baselines3 save"):
        _sb3_class(bad)


@pytest.mark.parametrize("text", ["[1]", "5", '"x"', "null", "{bad"])
@pytest.mark.parametrize("command", [["generate", "--policy", "skip-nothing", "--text", "t"],
                                     ["dataset", "record", "--policy", "skip-nothing", "--episodes", "1", "--out", "x"],
                                     ["probe"], ["leaderboard", "skip-nothing"]])
def test_env_kwargs_that_are_not_a_json_object(no_model_load, capsys, command, text):  # M5
    _one_line(command + ["--env-kwargs", text], capsys, "argument --env-kwargs:", rc=2)


def test_env_kwargs_that_are_not_a_dict_in_python():  # M5, the library side
    from skipenv.policies.deploy import PolicyGenerator

    with pytest.raises(ValueError, match="env_kwargs must be a dict"):
        PolicyGenerator("skip-nothing", env_kwargs=[1])


def test_generate_with_the_oracle(no_model_load, capsys):  # M6
    _one_line(["generate", "--policy", "oracle", "--text", "The council met."], capsys,
              "the oracle policy", "raw text has no such example")


@pytest.mark.parametrize("kwargs, expected", [
    ({"formulation_kwargs": {"lr": -1}}, "lr must be a finite number >= 0"),
    ({"formulation_kwargs": {"bogus": 1}}, "does not take formulation_kwargs ['bogus']"),
    ({"formulation_kwargs": [1]}, "formulation_kwargs must be an object"),
    ({"formulation_kwargs": {"update": "false"}}, "update must be true or false"),
    ({"formulation_kwargs": {"lam_max": 1e400}}, "lam_max"),
    ({"formulation": "budget", "formulation_kwargs": {"tau_range": [0.3, 0.1]}}, "tau_range must be [low, high]"),
    ({"formulation": "nope"}, "unknown formulation 'nope'"),
    ({"generator": "x"}, "take Python objects"),
    ({"device": "meta"}, "meta tensors"),
    ({"dtype": "float99"}, "unknown dtype 'float99'"),
])
def test_bad_env_kwargs_are_refused_before_the_model_loads(no_model_load, capsys, kwargs, expected):
    _one_line(["generate", "--policy", "skip-nothing", "--text", "t", "--env-kwargs", json.dumps(kwargs)], capsys,
              expected)
    _one_line(["leaderboard", "skip-nothing", "--env-kwargs", json.dumps(kwargs)], capsys, expected)


@pytest.mark.parametrize("plan, expected", [("x:layers=3", "cannot parse plan"), ("x:tokens=a", "cannot parse index"),
                                            ("x:tokens=3-1", "empty range")])
def test_bad_plan_strings_are_refused_before_the_model_loads(no_model_load, capsys, plan, expected):
    _one_line(["probe", "--plan", plan], capsys, "argument --plan:", expected, rc=2)


def test_probe_reserved_kwargs_and_bad_observations(no_model_load, capsys):
    _one_line(["probe", "--env-kwargs", '{"split": "test"}'], capsys, "'split' is set by the probe")
    _one_line(["probe", "--env-kwargs", '{"formulation_kwargs": {}}'], capsys, "'formulation_kwargs' is not for")
    _one_line(["probe", "--observations", "nonsense"], capsys, "nonsense")


def test_table_positive_ints_come_from_the_shared_argument_types(capsys):
    from skipenv.cli import args
    from skipenv.tables import cli as table_cli

    assert table_cli.positive_int is args.positive_int
    _one_line(["table", "validate", "--samples", "0"], capsys, "--samples: expected an integer >= 1, got 0", rc=2)
    _one_line(["table", "validate", "--tolerance", "nan"], capsys, "expected a finite number", rc=2)


def test_dataset_counts_are_checked_by_argparse(capsys):
    _one_line(["dataset", "record", "--policy", "skip-nothing", "--episodes", "0", "--out", "x"], capsys,
              "--episodes: expected an integer >= 1", rc=2)
    _one_line(["dataset", "evaluate", "--dataset", "x", "--policy", "skip-nothing", "--on-policy-samples", "-1"],
              capsys, "--on-policy-samples", rc=2)


def test_a_valid_command_still_reaches_the_model(no_model_load):
    """The checks refuse bad input only: a valid generate call gets as far as the model load."""
    with pytest.raises(ModelLoaded):
        main(["generate", "--policy", "lead:4", "--text", "The council met.",
              "--env-kwargs", json.dumps({"max_input_tokens": 96, "formulation_kwargs": {"lr": 0.1}})])
