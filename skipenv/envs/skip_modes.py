"""Skip modes of an environment: which calibration documents, where the statistics are cached, what refuses them.

``skip_mode="identity"`` (the default of every env id) needs nothing. ``"mean"`` / ``"linear"``
(:mod:`skipenv.generators.bypass`) need calibration statistics of the model on the task:

- **documents**: the first ``calibration_documents`` (default :data:`DEFAULT_CALIBRATION_DOCUMENTS`) examples of
  the task's ``train`` split in file order — never validation or test. They are *reserved*: an env over the train
  split (or ``"all"``) under a calibrated mode leaves them out of its episodes (``env.examples``), so no episode
  is scored by statistics fitted on its own document; the ids are in ``Evaluator.calibration_ids``.
- **identity**: the statistics are keyed by the model fingerprint, the task (class, metric, cache tag), the digest
  of the formatted calibration inputs (so another ``max_input_tokens`` or prompt format is another key), the mode
  and its settings (rank, ridge, document count); the resulting :attr:`Bypasses.digest
  <skipenv.generators.bypass.Bypasses.digest>` keys every outcome computed under them (the Evaluator's outcome
  cache) and is written into episode records (``env_kwargs["skip_mode"]``, checked by ``validate``) and replay
  tables (``config["skip_mode"]``).
- **cache**: ``$SKIPENV_CACHE/skip_modes/<fingerprint>/<key>.pt`` (written atomically; computed once with a tqdm
  progress bar; a file that does not load or does not match its key is recomputed with a warning).

Errors (:class:`~skipenv.generators.bypass.SkipModeError`, one message each): an unknown mode; statistics of another
model (fingerprint) or task; a calibration split other than ``"train"`` or calibration documents among the
evaluation documents (an env over validation / test never overlaps).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path

from ..generators.bypass import SKIP_MODES, Bypasses, SkipModeError, calibrate, check_skip_mode

__all__ = ["DEFAULT_CALIBRATION_DOCUMENTS", "DEFAULT_LINEAR_RANK", "SKIP_MODES", "SkipModeError",
           "calibration_examples", "calibration_ids", "load_or_calibrate", "check_bypasses_for", "check_no_overlap",
           "skip_mode_tag"]

#: calibration documents per (model, task, mode settings); 16 XSum train documents are ~6,000 tokens
DEFAULT_CALIBRATION_DOCUMENTS = 16
#: rank of the linear bypasses (chosen by held-out measurement on SmolLM2 / XSum: docs/skip_modes.md)
DEFAULT_LINEAR_RANK = 64
#: version of the calibration procedure (bump when it changes what is computed)
CALIBRATION_VERSION = 1


def _task_identity(task) -> str:
    tag = getattr(task, "cache_tag", lambda: "")()
    return f"{type(task).__module__}.{type(task).__qualname__}/{task.name}/{getattr(task, 'metric', '')}" + \
        (f"/{tag}" if tag else "")


def calibration_examples(task, documents: int = DEFAULT_CALIBRATION_DOCUMENTS, split: str = "train") -> list:
    """The calibration examples: the first ``documents`` examples of ``split`` (which must be ``"train"``).

    Raises:
        SkipModeError: ``split`` is not ``"train"``, ``documents < 2``, or the split has fewer examples.
    """
    if split != "train":
        raise SkipModeError(f"calibration_split={split!r}: calibration statistics come from the train split only "
                            f"(evaluation documents must never shape the bypasses); use 'train'")
    if isinstance(documents, bool) or not isinstance(documents, int) or documents < 2:
        raise SkipModeError(f"calibration_documents must be an integer >= 2, got {documents!r}")
    examples = list(task.examples("train"))
    if len(examples) < documents:
        raise SkipModeError(f"task {task.name!r} has {len(examples)} train examples, fewer than the "
                            f"calibration_documents={documents} asked for")
    return examples[:documents]


def _key(generator, task, prompts, mode: str, rank, ridge: float, ids) -> str:
    inputs = hashlib.sha256(json.dumps([list(map(int, p.input_ids)) for p in prompts]).encode()).hexdigest()
    return hashlib.sha256(json.dumps({
        "version": CALIBRATION_VERSION, "fingerprint": generator.fingerprint, "task": _task_identity(task),
        "inputs": inputs, "ids": list(ids), "mode": mode, "rank": rank, "ridge": ridge}, sort_keys=True
    ).encode()).hexdigest()[:20]


def load_or_calibrate(generator, task, mode: str, *, documents: int = DEFAULT_CALIBRATION_DOCUMENTS,
                      rank: int | None = None, ridge: float = 1e-3, split: str = "train", prompt=None,
                      cache_root=None, disk_cache: bool = True, progress: bool = True) -> Bypasses | None:
    """The bypasses of ``mode`` for ``generator`` on ``task`` (``None`` for identity): read from the disk cache or
    calibrated now (:func:`skipenv.generators.bypass.calibrate`) and stored.

    Args:
        generator: a decoder-only generator.
        task: the task (its train split gives the calibration documents, :func:`calibration_examples`).
        mode: a name in :data:`SKIP_MODES`.
        documents: calibration documents (``>= 2``).
        rank: linear rank (default :data:`DEFAULT_LINEAR_RANK`); ignored for mean.
        ridge: relative ridge of the linear least squares.
        split: the calibration split (must be ``"train"``).
        prompt: ``example -> PromptInput`` (default: the task's format for the generator's tokenizer); pass the
            Evaluator's so the calibration inputs are the episodes' inputs.
        cache_root: cache folder (default ``$SKIPENV_CACHE``). disk_cache: read / write the disk cache.
        progress: tqdm bar while calibrating.

    Raises:
        SkipModeError: an unknown mode, an encoder-decoder model with a calibrated mode, a bad split / count / rank
            (``linear_rank`` must be in ``[1, hidden size]``).
    """
    check_skip_mode(mode)
    if mode == "identity":
        return None
    if generator.num_encoder_layers:
        raise SkipModeError(f"skip_mode {mode!r} is not supported for encoder-decoder models "
                            f"({type(generator.model).__name__}); use skip_mode='identity'")
    if mode == "linear":
        rank = DEFAULT_LINEAR_RANK if rank is None else rank
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise SkipModeError(f"linear_rank must be an integer >= 1, got {rank!r}")
        d = generator.hidden_size
        if rank > d:  # a d x d map has rank <= d: a larger number is a typo or meant for another model
            raise SkipModeError(f"linear_rank {rank} exceeds the hidden size {d} of this model "
                                f"({type(generator.model).__name__}): a d x d bypass has rank at most d; pass "
                                f"linear_rank <= {d} (any value >= {(d + 1) // 2} is the full map)")
        rank = d if 2 * rank >= d else int(rank)
    else:
        rank = None
    examples = calibration_examples(task, documents, split)
    if prompt is None:
        def prompt(ex):
            return task.format(ex, generator.tokenizer, encoder_decoder=False)
    prompts = [prompt(ex) for ex in examples]
    ids = [ex.id for ex in examples]
    key = _key(generator, task, prompts, mode, rank, ridge, ids)
    from .cache import cache_root as default_root

    folder = Path(cache_root if cache_root is not None else default_root()) / "skip_modes" / generator.fingerprint
    path = folder / f"{key}.pt"
    if disk_cache and path.is_file():
        try:
            b = Bypasses.from_bytes(path.read_bytes())
            if b.source.get("key") == key and b.fingerprint == generator.fingerprint:
                return b
            why = "its key differs"
        except (OSError, SkipModeError) as e:
            why = str(e)
        from .cache import CacheWarning

        warnings.warn(f"dropping calibration file {path} ({why}); recalibrating", CacheWarning, stacklevel=2)
    source = {"key": key, "task": task.name, "task_identity": _task_identity(task), "split": split,
              "documents": len(ids), "document_ids": ",".join(ids), "ridge": ridge}
    b = calibrate(generator, prompts, mode, rank=rank, ridge=ridge, source=source, progress=progress)
    if disk_cache:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(b.to_bytes())
            os.replace(tmp, path)
        except OSError as e:
            from .cache import CacheWarning

            warnings.warn(f"cannot write calibration file {path} ({e}); keeping it in memory", CacheWarning,
                          stacklevel=2)
    return b


def calibration_ids(bypasses: Bypasses | None) -> tuple[str, ...]:
    """The example ids the bypasses were calibrated on (``()`` for identity)."""
    if bypasses is None:
        return ()
    ids = bypasses.source.get("document_ids", "")
    return tuple(i for i in ids.split(",") if i)


def check_bypasses_for(bypasses: Bypasses | None, generator, task) -> None:
    """Refuse bypasses calibrated on another model or task.

    Raises:
        SkipModeError: the fingerprint or the task differs (the message names both and the fix).
    """
    if bypasses is None:
        return
    if bypasses.fingerprint != generator.fingerprint:
        raise SkipModeError(f"the {bypasses.mode} calibration statistics belong to model {bypasses.fingerprint}, "
                            f"not to this model ({generator.fingerprint}): recalibrate on this model "
                            f"(skipenv.envs.skip_modes.load_or_calibrate)")
    ident = bypasses.source.get("task_identity")
    if ident != _task_identity(task):
        raise SkipModeError(f"the {bypasses.mode} calibration statistics belong to task {bypasses.source.get('task')!r} "
                            f"({ident}), not to task {task.name!r} ({_task_identity(task)}): recalibrate on this "
                            f"task's train split")


def check_no_overlap(bypasses: Bypasses | None, example_ids, split: str) -> None:
    """Refuse evaluation documents that the bypasses were calibrated on.

    Raises:
        SkipModeError: names how many overlap and the split.
    """
    both = sorted(set(calibration_ids(bypasses)) & set(example_ids))
    if both:
        raise SkipModeError(f"{len(both)} evaluation document(s) of split {split!r} (e.g. {both[0]!r}) are "
                            f"calibration documents of the {bypasses.mode} bypasses: evaluate on other documents "
                            f"(an env leaves its calibration documents out of the train split)")


def skip_mode_tag(bypasses: Bypasses | None) -> str:
    """``"identity"``, or ``"<mode>:<digest>"`` naming the calibration statistics (what records and tables keep)."""
    return "identity" if bypasses is None else f"{bypasses.mode}:{bypasses.digest}"
