"""One registry style for skipenv's name → entry tables (issue 19 counted 11 registries in 5 styles).

A :class:`Registry` is a module-level ``dict`` filled when its module is imported, by :meth:`Registry.register`
(a call or a class decorator). It stays a plain ``dict`` for readers (``name in r``, ``sorted(r)``, ``r.items()``,
``r.get(name)``), and adds the two errors every hand-written table had to repeat, or forgot:

- registering a name twice raises :class:`ValueError` naming the entry already there (a second family or task
  of the same name used to replace the first one silently);
- ``r[name]`` for an unknown name raises :class:`UnknownNameError` (a :class:`KeyError` *and* a
  :class:`ValueError`, so both kinds of ``except`` keep working) whose message lists the registered names.

Example::

    GENERATOR_CLASSES = Registry("architecture", {"LlamaForCausalLM": LlamaGenerator})

    @GENERATOR_CLASSES.register("MyForCausalLM")
    class MyGenerator(DecoderOnlyGenerator): ...

Replacing an entry for a test: ``monkeypatch.delitem(r, name)`` first, then ``monkeypatch.setitem(r, name, new)``
(a plain ``setitem`` on a registered name is a duplicate); the undo restores the old entry.

The list of skipenv's registries, which use this style and why the others do not yet, is in ``docs/layout.md``
("Registries").
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

__all__ = ["Registry", "UnknownNameError"]

_MISSING = object()


class UnknownNameError(KeyError, ValueError):
    """A name that is not in a :class:`Registry`; the message lists the registered names."""

    def __str__(self) -> str:  # KeyError's own str() would quote the whole message
        return str(self.args[0]) if self.args else ""


class Registry(dict):
    """name → entry, filled by :meth:`register` with clear errors on duplicate and unknown names.

    Args:
        kind: what an entry is, for the error messages (e.g. ``"architecture"``, ``"learner"``).
        entries: initial ``name → entry`` pairs, registered in order (so duplicates there fail too).

    Raises:
        ValueError: an empty ``kind``; a name given twice in ``entries`` (see :meth:`register`).
    """

    def __init__(self, kind: str = "entry", entries: Mapping[str, Any] | None = None):
        super().__init__()
        if not isinstance(kind, str) or not kind:
            raise ValueError(f"a Registry needs a kind (what its entries are), got {kind!r}")
        self.kind = kind
        for name, entry in (entries or {}).items():
            self.register(name, entry)

    def register(self, name: str, entry: Any = _MISSING) -> Any:
        """Add ``name → entry`` and return ``entry``; without ``entry``, a decorator that registers what it
        decorates (and returns it unchanged).

        Raises:
            ValueError: ``name`` is not a non-empty string, or is registered already (the message names the entry
                there; pick another name, or remove the old one first with ``del registry[name]``).
        """
        if entry is _MISSING:
            def decorate(obj: Callable) -> Callable:
                return self.register(name, obj)

            return decorate
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}")
        if dict.__contains__(self, name):
            raise ValueError(f"{self.kind} {name!r} is registered already (as {dict.__getitem__(self, name)!r}); "
                             f"choose another name, or `del` the old entry first")
        dict.__setitem__(self, name, entry)
        return entry

    def __setitem__(self, name: str, entry: Any) -> None:
        self.register(name, entry)

    def __getitem__(self, name: str) -> Any:
        try:
            return dict.__getitem__(self, name)
        except KeyError:
            raise UnknownNameError(f"unknown {self.kind} {name!r}; registered: {', '.join(sorted(self))}") from None

    def update(self, *args, **kwargs) -> None:  # dict.update would bypass the duplicate check
        for name, entry in dict(*args, **kwargs).items():
            self.register(name, entry)

    def __ior__(self, other):
        self.update(other)
        return self

    def setdefault(self, name: str, default: Any = None) -> Any:
        if not dict.__contains__(self, name):
            self.register(name, default)
        return dict.__getitem__(self, name)

    def __reduce__(self):  # pickles (e.g. to Ray workers) as kind + entries, not through __setitem__ on an empty one
        return (type(self), (self.kind, dict(self)))

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {dict.__repr__(self)})"
