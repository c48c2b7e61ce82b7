"""Hardening leftovers of the command line (outside tester): an unknown option is the sub-command's usage error
(not the top-level ``usage: skipenv [-h] COMMAND``), ``--out`` naming an existing file says so, ``skipenv profile``
on a table / Mix id and live-env kwargs on a table id are one line, not a raw TypeError. Each case runs
``skipenv.cli.main`` in-process; none may load a model."""

from __future__ import annotations

import json

import pytest

import skipenv.envs.switchdec as switchdec
import skipenv.loading
from skipenv.cli import main

pytestmark = pytest.mark.hardening


@pytest.fixture(autouse=True)
def no_model_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded: the input should have been refused before")

    monkeypatch.setattr(skipenv.loading, "load_generator", refuse)
    monkeypatch.setattr(switchdec, "shared_generator", refuse)


def _err(argv, capsys) -> tuple[int, str]:
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse usage errors
        rc = e.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


@pytest.mark.parametrize("argv, prog, hint", [
    (["probe", "--docs", "-1"], "skipenv probe", "did you mean --test-docs?"),
    (["table", "build", "--docs", "0"], "skipenv table build", "did you mean --max-documents?"),
    (["profile", "--doks", "3"], "skipenv profile", "did you mean --docs?"),
    (["probe", "stray"], "skipenv probe", "see skipenv probe --help"),
])
def test_unknown_option_is_the_subcommands_usage_error(argv, prog, hint, capsys):
    rc, err = _err(argv, capsys)
    assert rc == 2
    assert f"usage: {prog} " in err and "usage: skipenv [-h] COMMAND" not in err
    assert f"{prog}: error: unrecognized arguments: " in err and hint in err


def test_real_flags_out_of_range_stay_the_subcommands_error(capsys):
    for argv, text in ((["probe", "--train-docs", "-1"], "skipenv probe: error: argument --train-docs: expected an "
                                                        "integer >= 1, got -1"),
                       # 0 is valid (compact the finished shards only): -1 is the out-of-range value
                       (["table", "build", "--max-documents", "-1"], "skipenv table build: error: argument "
                                                                    "--max-documents: expected an integer >= 0, got -1")):
        rc, err = _err(argv, capsys)
        assert rc == 2 and text in err


@pytest.mark.parametrize("command", ["probe", "profile", "leaderboard", "train"])
def test_out_naming_an_existing_file(command, tmp_path, capsys):
    f = tmp_path / "results.txt"
    f.write_text("keep me")
    rc, err = _err([command, "--out", str(f)], capsys)
    assert rc == 2 and f"skipenv {command}: error: argument --out: '{f}' is an existing file" in err
    assert "names an output folder" in err and "File exists" not in err
    rc, err = _err([command, "--out", str(f / "sub")], capsys)
    assert rc == 2 and f"'{f / 'sub'}' is under '{f}', an existing file" in err
    assert f.read_text() == "keep me"


def test_file_outputs_refuse_a_folder(tmp_path, capsys):
    rc, err = _err(["generate", "--text", "x", "--out", str(tmp_path)], capsys)
    assert rc == 2 and f"'{tmp_path}' is an existing folder, but this option names an output file" in err
    rc, err = _err(["dataset", "evaluate", "--out", str(tmp_path)], capsys)
    assert rc == 2 and "is an existing folder" in err


@pytest.mark.parametrize("env_id, fix", [("SwitchDec-XSum-Table-v0", "profile SwitchDec-XSum-v1, the live id its "
                                                                    "table was built from"),
                                         ("SwitchDec-Mix-v0", "profile a live SwitchDec id")])
def test_profile_on_a_table_or_mix_id(env_id, fix, tmp_path, capsys):
    rc, err = _err(["profile", "--env", env_id, "--out", str(tmp_path / "p")], capsys)
    lines = [x for x in err.splitlines() if x.startswith("skipenv ")]
    assert rc == 1 and len(lines) == 1
    assert f"skipenv profile: error: {env_id} builds a " in lines[0] and "not a live SwitchDec env" in lines[0]
    assert fix in lines[0]
    assert not (tmp_path / "p").exists()


def test_live_kwargs_on_a_table_id_from_the_command_line(tmp_path, capsys):
    """--env-kwargs is checked against the table env's own signature (it was not checked for table ids at all)."""
    from skipenv.cli.args import check_env_kwargs, env_keywords

    accepted = env_keywords("SwitchDec-XSum-Table-v1")
    assert {"table", "split", "skip_threshold", "formulation"} <= accepted and "calibration_documents" not in accepted
    with pytest.raises(ValueError, match="SwitchDec-XSum-Table-v1 takes no keyword argument 'calibration_documents'"):
        check_env_kwargs("SwitchDec-XSum-Table-v1", json.loads('{"calibration_documents": 3}'))
    assert check_env_kwargs("SwitchDec-XSum-Table-v1", {"split": "test"}) == {"split": "test"}
    # the Mix env forwards member kwargs: accepted, not refused
    assert check_env_kwargs("SwitchDec-Mix-v0", {"token_segments": 4, "weights": [1, 1, 1]})
