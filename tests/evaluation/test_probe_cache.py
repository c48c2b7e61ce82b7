"""The probe's cached menu table (issue 20 H3, M7): keyed by the model and the configuration, refused when edited
or damaged, with one line on the command line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")

KW = {"max_new_tokens": 4, "max_input_tokens": 96, "disk_cache": False}
MENU = ["skip nothing:", "tail:tokens=6,7", "att:attention=1"]


def _save(folder, smollm2_tokenizer, negate: bool):
    """A tiny random Llama saved with save_pretrained; ``negate``: the same weights with layers 2-3 down_proj
    negated (issue 20's tiny_model_neg)."""
    from skipenv.testing import tiny_generator

    g = tiny_generator("llama", smollm2_tokenizer, initializer_range=0.5)
    if negate:
        with torch.no_grad():
            for i in (2, 3):
                g.model.model.layers[i].mlp.down_proj.weight.mul_(-1)
    if folder.exists():
        shutil.rmtree(folder)
    g.model.save_pretrained(str(folder))
    smollm2_tokenizer.save_pretrained(str(folder))
    return g


def _probe(model_dir, out, **kw):
    from skipenv.evaluation.probe import run_probe

    return run_probe(env_kwargs={"model": str(model_dir), **KW}, menu=MENU, num_train=4, num_test=2, out_dir=out,
                     progress=False, **kw)


def _fresh_outcomes(generator):
    """The menu's outcomes evaluated afresh on ``generator`` (no table, no disk cache)."""
    import skipenv
    from skipenv.evaluation.probe import evaluate_menu, parse_plan

    def make_env(split, n):
        return skipenv.make("SwitchDec-XSum-v1", generator=generator, split=split, num_examples=n,
                        formulation="per_input", **KW)

    spec = make_env("train", 1).unwrapped.plan_spec
    return evaluate_menu(make_env, dict(parse_plan(t, spec) for t in MENU), num_train=4, num_test=2,
                         progress=False).outcomes


@pytest.fixture(scope="module")
def probed(tmp_path_factory, smollm2_tokenizer):
    """One probe run on a saved tiny model: (model folder, out folder, table folder, the generator saved)."""
    base = tmp_path_factory.mktemp("probe_cache")
    model_dir, out = base / "model", base / "out"
    g = _save(model_dir, smollm2_tokenizer, negate=False)
    table, report = _probe(model_dir, out)
    return model_dir, out, report.folder, g, table


def _copy(probed, tmp_path):
    _, out, folder, _, _ = probed
    dst = tmp_path / "out"
    shutil.copytree(out, dst)
    return dst, dst / folder.name


def test_weights_resaved_under_the_same_path_are_not_served_the_old_table(probed, tmp_path, smollm2_tokenizer):
    model_dir, out, folder, g, table = probed
    assert np.allclose(table.outcomes["quality"], _fresh_outcomes(g)["quality"])  # the table is what the model gives
    moved = tmp_path / "model"
    shutil.copytree(model_dir, moved)
    out2 = tmp_path / "out"
    shutil.copytree(out, out2)
    first, _ = _probe(moved, out2)  # same weights at the new path: computed (the path is configuration) ...
    again, rep = _probe(moved, out2)  # ... and reused from then on
    assert again.outcomes.equals(first.outcomes)
    neg = _save(moved, smollm2_tokenizer, negate=True)  # other weights, same path
    fresh = _fresh_outcomes(neg)
    table2, rep2 = _probe(moved, out2)
    assert rep2.folder != rep.folder  # the folder is keyed by the model fingerprint
    assert np.allclose(table2.outcomes["quality"], fresh["quality"])
    assert not np.allclose(table2.outcomes["quality"], first.outcomes["quality"])
    stored = json.loads((rep2.folder / "identity.json").read_text())["identity"]
    from skipenv.envs import model_fingerprint

    assert stored["model_fingerprint"] == model_fingerprint(neg) != model_fingerprint(g)


def test_an_edited_table_is_refused(probed, tmp_path):
    from skipenv.evaluation.probe import ProbeTableError

    _, out, _, _, _ = probed
    out2, folder = _copy(probed, tmp_path)
    o = (folder / "outcomes.csv").read_text().splitlines()
    header = o[0].split(",")
    q = header.index("quality")
    rows = [r.split(",") for r in o[1:]]
    for r in rows:
        if r[0] == "test":
            r[q] = "5.0"  # issue 20 M7
    (folder / "outcomes.csv").write_text("\n".join([o[0]] + [",".join(r) for r in rows]) + "\n")
    with pytest.raises(ProbeTableError, match=r"outcomes\.csv was changed after it was written.*--no-cache"):
        _probe(probed[0], out2)
    # --no-cache evaluates again: the true qualities come back, and the table is reusable again
    table, _ = _probe(probed[0], out2, cache=False)
    assert np.allclose(table.outcomes["quality"], probed[4].outcomes["quality"])
    assert table.outcomes["quality"].max() <= 1.0
    again, _ = _probe(probed[0], out2)
    assert again.outcomes.equals(table.outcomes)


@pytest.mark.parametrize("damage", ["truncate", "garble", "no identity", "empty"])
def test_a_damaged_table_is_one_clear_error(probed, tmp_path, damage):
    from skipenv.evaluation.probe import ProbeTable, ProbeTableError

    out2, folder = _copy(probed, tmp_path)
    path = folder / "outcomes.csv"
    text = path.read_text()
    if damage == "truncate":
        path.write_text(text[: len(text) // 2])
    elif damage == "garble":
        path.write_bytes(b"\x00\xff" * 40 + text.encode()[100:])
    elif damage == "empty":
        path.write_text("")
    else:
        (folder / "identity.json").unlink()
    with pytest.raises(ProbeTableError, match=str(folder)) as e:
        _probe(probed[0], out2)
    assert "delete the folder" in str(e.value) and "\n" not in str(e.value)
    if damage in ("garble", "empty"):  # without its digest file, the content checks still name the file
        (folder / "identity.json").unlink()
        with pytest.raises(ProbeTableError, match="outcomes.csv"):
            ProbeTable.load(folder)


def test_a_table_of_another_model_or_configuration_is_refused(probed, tmp_path):
    from skipenv.envs.cache import IdentityMismatchError

    out2, folder = _copy(probed, tmp_path)
    meta = json.loads((folder / "identity.json").read_text())
    meta["identity"]["model_fingerprint"] = "0123456789abcdef"  # as if the folder came from another model
    (folder / "identity.json").write_text(json.dumps(meta))
    with pytest.raises(IdentityMismatchError, match="another model.*0123456789abcdef"):
        _probe(probed[0], out2)
    meta = json.loads((probed[2] / "identity.json").read_text())
    meta["identity"]["config"]["num_train"] = 40
    meta["identity"]["config_sha256"] = "0" * 64
    (folder / "identity.json").write_text(json.dumps(meta))
    with pytest.raises(IdentityMismatchError, match=r"another configuration.*num_train \(40 -> 4\)"):
        _probe(probed[0], out2)


def test_cli_refuses_an_edited_table_in_one_line(probed, tmp_path, capsys):
    from skipenv.cli import main

    out2, folder = _copy(probed, tmp_path)
    with open(folder / "outcomes.csv", "a") as f:
        f.write("test,0,x,skip nothing,5.0,5.0,1.0,0.0,1,0.0\n")
    argv = ["probe", "--env-kwargs", json.dumps({"model": str(probed[0]), **KW}), "--train-docs", "4",
            "--test-docs", "2", "--out", str(out2), "--no-progress", *sum((["--plan", p] for p in MENU), [])]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("skipenv probe: error: probe table") and "changed after it was written" in err[0]
    assert len(err) == 2 and "SKIPENV_TRACEBACK" in err[1]
