"""Skip modes: what a skipped attention / FFN sublayer adds to the residual stream instead of its output.

A pre-LN sublayer adds an update ``u = f(norm(h))`` to the residual stream ``h`` (``[B, T, d]``). Skipping it
(``skip_mode="identity"``, the paper's skip and skipenv's behaviour before skip modes) adds nothing. A calibrated
bypass adds a cheap estimate of ``u`` instead:

- ``"mean"``: ``h + μ``, where ``μ`` (``[d]``) is the sublayer's mean update over the calibration tokens.
  Charged ``d`` FLOPs per token (the add).
- ``"linear"``: ``h + x·U·V + b`` with ``x = norm(h)`` the sublayer's own normalised input (its first module:
  ``input_layernorm`` / ``post_attention_layernorm`` / ``ln_1`` ...), ``U`` ``[d, r]``, ``V`` ``[r, d]``, ``b``
  ``[d]``: the least-squares affine map from ``x`` to ``u`` over the calibration tokens, reduced to rank ``r``
  (reduced-rank regression: the fitted map projected on the top ``r`` principal directions of its fitted values,
  Izenman 1975); ``r >= d / 2`` keeps the full map ``W`` ``[d, d]`` (one matmul is then cheaper than two).
  Charged the matmuls: ``4·d·r`` FLOPs per token (``2·d·d`` at full rank); the bias is fused into ``addmm``
  and the norm is not counted, as in the rest of the FLOPs model (:mod:`skipenv.generators.flops`).

The update ``u`` is the output of the sublayer's last module (:class:`~skipenv.generators.base.SublayerModules`:
``self_attn`` / ``mlp`` for Llama, Qwen2, Qwen3, Mistral, GPT-2; the dropout after them for Phi-3; the post-norm
for Gemma 3), so the same hooks calibrate every decoder-only family. Encoder-decoder models (BART's post-LN
blocks, T5's blocks output the stream itself) are refused: :class:`SkipModeError`.

Where the idea and the mean result come from: issue 22 (mean substitution measured with forward hooks on SmolLM2);
"execute or approximate" bypasses (Informed Routing / LFF, arXiv 2510.13831); the near-linearity of transformer
layer maps ("Your Transformer is Secretly Linear", 2024).

A :class:`Bypasses` is made by :func:`calibrate` (sufficient statistics over calibration inputs, float64) and is
active on a generator inside :meth:`SkippableGenerator.bypassing
<skipenv.generators.base.SkippableGenerator.bypassing>`; its :attr:`~Bypasses.digest` is part of every cache key
of outcomes computed under it (:mod:`skipenv.envs.skip_modes`).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch

__all__ = ["SKIP_MODES", "SkipModeError", "Bypasses", "check_skip_mode", "calibrate", "bypass_flops_per_token"]

#: the skip modes, in order of cost
SKIP_MODES = ("identity", "mean", "linear")


class SkipModeError(ValueError):
    """An unknown skip mode, a skip mode the model cannot run, or calibration statistics that do not belong to
    the model / task / settings they are used with."""


def check_skip_mode(mode) -> str:
    """Return ``mode`` if it names a skip mode.

    Raises:
        SkipModeError: anything else (the message lists :data:`SKIP_MODES`).
    """
    if not isinstance(mode, str) or mode not in SKIP_MODES:
        raise SkipModeError(f"unknown skip_mode {mode!r}; choose one of {SKIP_MODES} ('identity' = the residual "
                            f"stream passes unchanged, the default)")
    return mode


def bypass_flops_per_token(mode: str, d: int, rank: int | None) -> int:
    """FLOPs per token of one skipped sublayer's bypass (2 FLOPs per multiply-accumulate, as FlopCounterMode):
    ``0`` for identity, ``d`` for mean (the add), ``4·d·r`` for a rank-``r`` linear map (``2·d·d`` when full)."""
    check_skip_mode(mode)
    if mode == "identity":
        return 0
    if mode == "mean":
        return int(d)
    r = int(rank)
    return 2 * d * d if r >= d else 4 * d * r


@dataclass
class Bypasses:
    """Calibrated bypasses of every decoder sublayer of one model.

    Attributes:
        mode: ``"mean"`` or ``"linear"`` (``"identity"`` needs no object: pass ``None``).
        d: width of the residual stream.
        rank: the linear maps' rank (``None`` for mean; ``d`` = full rank).
        fingerprint: :func:`skipenv.envs.cache.model_fingerprint` of the model calibrated on.
        source: what the statistics came from (task name, split, document ids, counts); part of the digest.
        params: per candidate label (``"decoder.attention.3"``, ``"decoder.ffn.0"``): mean: ``{"mean": [d]}``;
            linear: ``{"bias": [d], "U": [d, r], "V": [r, d]}`` or ``{"bias": [d], "W": [d, d]}`` (float32).
        report: per label, calibration diagnostics (held-out R² per tried rank, token counts); not in the digest.
    """

    mode: str
    d: int
    rank: int | None
    fingerprint: str
    source: dict
    params: dict[str, dict[str, torch.Tensor]]
    report: dict = field(default_factory=dict)

    def __post_init__(self):
        check_skip_mode(self.mode)
        if self.mode == "identity":
            raise SkipModeError("skip_mode 'identity' has no bypasses: pass None")
        self._digest = None
        self._cast: dict = {}

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_cast"] = {}
        return state

    @property
    def digest(self) -> str:
        """SHA-256 (16 hex chars) of the mode, rank, model fingerprint, source and every parameter's bytes."""
        if self._digest is None:
            h = hashlib.sha256(repr((self.mode, self.d, self.rank, self.fingerprint,
                                     sorted(self.source.items()))).encode())
            for label in sorted(self.params):
                for name in sorted(self.params[label]):
                    t = self.params[label][name].detach().float().contiguous().cpu()
                    h.update(f"{label}.{name}{tuple(t.shape)}".encode())
                    h.update(t.numpy().tobytes())
            self._digest = h.hexdigest()[:16]
        return self._digest

    @property
    def flops_per_token(self) -> int:
        """FLOPs per token of one skipped sublayer's bypass (:func:`bypass_flops_per_token`)."""
        return bypass_flops_per_token(self.mode, self.d, self.rank)

    def _tensors(self, label: str, like: torch.Tensor) -> dict[str, torch.Tensor]:
        key = (label, like.dtype, like.device)
        hit = self._cast.get(key)
        if hit is None:
            p = self.params.get(label)
            if p is None:
                raise SkipModeError(f"the {self.mode} bypasses have no statistics for {label} (calibrated on another "
                                    f"model?)")
            hit = self._cast[key] = {k: v.to(device=like.device, dtype=like.dtype) for k, v in p.items()}
        return hit

    def update(self, label: str, hidden: torch.Tensor, norm) -> torch.Tensor:
        """The bypass's estimate of the sublayer's update for ``hidden`` ``[B, T, d]`` (same shape and dtype).
        ``norm`` is the sublayer's first module (its input norm; called only in linear mode)."""
        t = self._tensors(label, hidden)
        if self.mode == "mean":
            return t["mean"].expand_as(hidden)
        x = norm(hidden)
        flat = x.reshape(-1, x.shape[-1])
        if "W" in t:
            out = torch.addmm(t["bias"], flat, t["W"])
        else:
            out = torch.addmm(t["bias"], flat @ t["U"], t["V"])
        return out.reshape(hidden.shape)

    def to_bytes(self) -> bytes:
        """Serialised form (``torch.save`` of plain tensors and dicts; read with :meth:`from_bytes`)."""
        buf = io.BytesIO()
        torch.save({"mode": self.mode, "d": self.d, "rank": self.rank, "fingerprint": self.fingerprint,
                    "source": self.source, "params": self.params, "report": self.report, "digest": self.digest}, buf)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Bypasses":
        """Inverse of :meth:`to_bytes`.

        Raises:
            SkipModeError: the bytes do not hold bypasses, or their parameters do not match their stored digest
                (a corrupt or edited file).
        """
        try:
            raw = torch.load(io.BytesIO(data), weights_only=True)
            out = cls(mode=raw["mode"], d=int(raw["d"]), rank=raw["rank"], fingerprint=raw["fingerprint"],
                      source=dict(raw["source"]), params=raw["params"], report=raw.get("report", {}))
        except Exception as e:  # noqa: BLE001 - any unreadable file is one error
            raise SkipModeError(f"not a skipenv bypass file ({type(e).__name__}: {e})") from None
        if out.digest != raw.get("digest"):
            raise SkipModeError("bypass file is corrupt: its parameters do not match its digest; delete it so it is "
                                "recalibrated")
        return out


# ---------------------------------------------------------------------------------------------- calibration
class _Done(Exception):
    """Raised by a hook to end a calibration pass after its last hooked layer."""


class _Stats:
    """Float64 sufficient statistics of (x, u) pairs over tokens: n, Σx, Σu, Σxxᵀ, Σxuᵀ, Σ‖u‖²."""

    def __init__(self, d: int, linear: bool):
        self.n = 0
        self.su = torch.zeros(d, dtype=torch.float64)
        self.linear = linear
        if linear:
            self.sx = torch.zeros(d, dtype=torch.float64)
            self.sxx = torch.zeros(d, d, dtype=torch.float64)
            self.sxu = torch.zeros(d, d, dtype=torch.float64)
            self.suu = 0.0

    def add(self, x: torch.Tensor | None, u: torch.Tensor) -> None:
        u = u.reshape(-1, u.shape[-1]).double()
        self.n += u.shape[0]
        self.su += u.sum(0)
        if self.linear:
            x = x.reshape(-1, x.shape[-1]).double()
            self.sx += x.sum(0)
            self.sxx += x.T @ x
            self.sxu += x.T @ u
            self.suu += float((u * u).sum())

    def __iadd__(self, other: "_Stats") -> "_Stats":
        self.n += other.n
        self.su += other.su
        if self.linear:
            self.sx += other.sx
            self.sxx += other.sxx
            self.sxu += other.sxu
            self.suu += other.suu
        return self

    def centred(self):
        n = max(self.n, 1)
        mx, mu = self.sx / n, self.su / n
        cxx = self.sxx / n - torch.outer(mx, mx)
        cxu = self.sxu / n - torch.outer(mx, mu)
        return mx, mu, cxx, cxu


def _fit(stats: _Stats, ridge: float):
    """Least-squares map ``W`` ``[d, d]`` (ridge ``ridge · mean eigenvalue of Cxx``), the means, and the
    eigen-decomposition of the fitted values' covariance ``Wᵀ Cxx W`` (descending)."""
    mx, mu, cxx, cxu = stats.centred()
    d = cxx.shape[0]
    lam = ridge * float(torch.diagonal(cxx).mean().clamp(min=1e-12))
    w = torch.linalg.solve(cxx + lam * torch.eye(d, dtype=cxx.dtype), cxu)
    evals, evecs = torch.linalg.eigh(w.T @ cxx @ w)
    order = torch.argsort(evals, descending=True)
    return w, mx, mu, evecs[:, order]


def _rank_map(w, evecs, r: int):
    if r >= w.shape[0]:
        return w
    v = evecs[:, :r]
    return (w @ v) @ v.T


def _heldout_r2(w_r, mx, mu, held: _Stats) -> float:
    """R² of ``u ≈ (x − mx)·W + mu`` on held-out statistics: 1 − E‖u − û‖² / E‖u − ū_held‖²."""
    n = max(held.n, 1)
    hx, hu = held.sx / n, held.su / n
    # E‖u − (x − mx)W − mu‖² from raw moments
    b = mu - mx @ w_r
    e_uu = held.suu / n
    e_pred2 = float(torch.sum(w_r * ((held.sxx / n) @ w_r))) + 2 * float(hx @ w_r @ b) + float(b @ b)
    e_cross = float(torch.sum(w_r * (held.sxu / n))) + float(hu @ b)
    err = e_uu - 2 * e_cross + e_pred2
    var = e_uu - float(hu @ hu)
    return 1.0 - err / max(var, 1e-30)


def calibrate(generator, inputs: Sequence, mode: str, *, rank: int | None = None, ridge: float = 1e-3,
              ranks_tried: Iterable[int] = (8, 16, 32, 64, 128, 256), layers_per_pass: int | None = None,
              source: dict | None = None, progress: bool = True) -> Bypasses:
    """Calibrate the bypasses of every decoder sublayer of ``generator`` on ``inputs`` (full model, no skips).

    Each input runs through the unmodified model once per pass of ``layers_per_pass`` layers (passes bound the
    float64 statistics to ``layers_per_pass · 2 · 2 · d²`` numbers in linear mode); hooks on each sublayer's first
    module (its normalised input ``x``) and last module (its update ``u``) accumulate the statistics. Linear mode
    fits the map on every input and reports, per sublayer, the held-out R² of each rank in ``ranks_tried`` (fit on
    the first half of the inputs, measured on the second) in :attr:`Bypasses.report`.

    Args:
        generator: a decoder-only :class:`~skipenv.generators.base.SkippableGenerator`.
        inputs: ``N >= 2`` :class:`~skipenv.inputs.PromptInput` (the calibration documents, formatted).
        mode: ``"mean"`` or ``"linear"``.
        rank: the linear maps' rank ``r`` (``1 <= r``; ``r >= d/2`` stores the full map); required for linear.
        ridge: relative ridge of the least squares (times the mean variance of ``x``).
        ranks_tried: ranks whose held-out R² is reported (linear mode).
        layers_per_pass: layers hooked per pass over the inputs (default: as many as keep the linear statistics
            under 1 GiB, e.g. all 30 layers of SmolLM2 at d = 576; every layer for mean). The statistics do not
            depend on it.
        source: provenance recorded in :attr:`Bypasses.source` (part of the digest).
        progress: show a tqdm bar (:func:`skipenv.util.progress.log_friendly_progress`).

    Raises:
        SkipModeError: an unknown or identity mode, an encoder-decoder model, a missing / invalid rank, fewer
            than 2 inputs.
    """
    from tqdm import tqdm

    from ..util.progress import log_friendly_progress

    check_skip_mode(mode)
    if mode == "identity":
        raise SkipModeError("skip_mode 'identity' needs no calibration")
    if generator.num_encoder_layers:
        raise SkipModeError(f"skip_mode {mode!r} is not supported for encoder-decoder models "
                            f"({type(generator.model).__name__}: post-LN / stream-output sublayers); use "
                            f"skip_mode='identity'")
    d = generator.hidden_size
    if mode == "linear":
        if rank is None or isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise SkipModeError(f"skip_mode 'linear' needs an integer rank >= 1, got {rank!r}")
        rank = min(int(rank), d)
        if 2 * rank >= d:
            rank = d  # two factors of rank >= d/2 cost more than the full map
    else:
        rank = None
    if len(inputs) < 2:
        raise SkipModeError(f"calibration needs at least 2 documents, got {len(inputs)}")
    linear = mode == "linear"
    layers = list(generator._decoder_layers())
    half = len(inputs) // 2
    params: dict = {}
    report: dict = {}
    if layers_per_pass is None:
        per_layer = 2 * 2 * 2 * d * d * 8 if linear else 1  # sublayers x halves x (xxᵀ, xuᵀ) x float64
        layers_per_pass = max(1, (1 << 30) // per_layer)
    layers_per_pass = max(1, int(layers_per_pass))
    passes = [range(s, min(s + layers_per_pass, len(layers))) for s in range(0, len(layers), layers_per_pass)]
    with log_friendly_progress(), generator._lock:
        bar = tqdm(total=len(passes) * len(inputs), desc=f"calibrating {mode} bypasses", unit="document",
                   disable=not progress)
        for block in passes:
            stats = {}
            handles = []
            for i in block:
                mods = generator.sublayer_modules("decoder", i)
                for kind, seq in (("attention", mods.attention), ("ffn", mods.ffn)):
                    label = f"decoder.{kind}.{i}"
                    stats[label] = [_Stats(d, linear), _Stats(d, linear)]
                    cur = {}

                    def take_x(module, args, output, cur=cur):
                        cur["x"] = output

                    def take_u(module, args, output, label=label, cur=cur):
                        u = output[0] if isinstance(output, tuple) else output
                        stats[label][_SPLIT[0]].add(cur.pop("x", None), u)

                    if linear:
                        handles.append(seq[0].register_forward_hook(take_x))
                    handles.append(seq[-1].register_forward_hook(take_u))
            def stop(module, args, output):
                raise _Done

            # the pass ends after the last hooked layer (no later layer, final norm or LM head is run)
            handles.append(layers[block[-1]].register_forward_hook(stop))
            try:
                for k, inp in enumerate(inputs):
                    _SPLIT[0] = 0 if k < half else 1
                    ids = torch.tensor([list(inp.input_ids)], device=generator.device)
                    try:
                        with torch.inference_mode():
                            generator._run_to_first_layer(ids, torch.ones_like(ids))
                    except _Done:
                        pass
                    bar.update(1)
            finally:
                for h in handles:
                    h.remove()
            for label, (a, b) in stats.items():
                if linear:
                    w_a, mx_a, mu_a, ev_a = _fit(a, ridge)
                    r2 = {str(r): _heldout_r2(_rank_map(w_a, ev_a, r), mx_a, mu_a, b)
                          for r in sorted(set(int(x) for x in ranks_tried) | {d}) if r <= d}
                    r2["mean"] = _heldout_r2(torch.zeros_like(w_a), mx_a, mu_a, b)
                    a += b
                    w, mx, mu, ev = _fit(a, ridge)
                    if rank >= d:
                        params[label] = {"bias": (mu - mx @ w).float(), "W": w.float()}
                    else:
                        v = ev[:, :rank]
                        u_fac = w @ v
                        params[label] = {"bias": (mu - mx @ (u_fac @ v.T)).float(), "U": u_fac.float(),
                                         "V": v.T.contiguous().float()}
                    report[label] = {"tokens": a.n, "heldout_r2": r2}
                else:
                    a += b
                    params[label] = {"mean": (a.su / max(a.n, 1)).float()}
                    report[label] = {"tokens": a.n}
        bar.close()
    return Bypasses(mode=mode, d=d, rank=rank, fingerprint=generator.fingerprint, source=dict(source or {}),
                    params=params, report=report)


#: which half of the calibration inputs the running pass is in (0: fit, 1: held out); single-threaded under the
#: model's lock
_SPLIT = [0]
