"""Finding ops by name: built-ins, ``package.module:attribute`` paths and the
``gpufeed.ops`` entry-point group."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from importlib.metadata import entry_points
from typing import Any

from gpufeed.errors import ConfigError, OpLoadError, UnknownOp
from gpufeed.ops.base import Op
from gpufeed.ops.builtin import Dense, Echo, VectorAdd
from gpufeed.ops.sha256 import Sha256

ENTRY_POINT_GROUP = "gpufeed.ops"
BUILTINS: dict[str, Callable[[], Op]] = {
    "echo": Echo,
    "vector_add": VectorAdd,
    "sha256": Sha256,
    "dense": Dense,
}
MAX_OPS = 1 << 16  # the slot header's op field is a u16


def _as_op(obj: Any, origin: str) -> Op:
    """Accept an Op instance, an Op subclass or a factory returning an Op."""
    if isinstance(obj, Op):
        return obj
    if callable(obj):
        try:
            made = obj()
        except Exception as exc:
            raise OpLoadError(f"{origin}: creating the op failed: {exc!r}") from exc
        if isinstance(made, Op):
            return made
        obj = made
    raise OpLoadError(
        f"{origin} is a {type(obj).__name__}, not a gpufeed.ops.Op "
        "(nor an Op subclass or a function returning one)"
    )


def load_import_path(spec: str) -> Op:
    """Load ``package.module:attribute``; every failure is an ``OpLoadError`` saying why."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise OpLoadError(f"op path {spec!r} must look like package.module:attribute")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise OpLoadError(f"op path {spec!r}: cannot import {module_name!r}: {exc}") from exc
    obj: Any = module
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise OpLoadError(f"op path {spec!r}: {module_name} has no {attribute!r}") from exc
    return _as_op(obj, f"op path {spec!r}")


def entry_point_names() -> list[str]:
    return sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))


def load_op(spec: str, *, dense_model: str | None = None) -> Op:
    """The op a ``--op`` value names: a built-in, an import path or an entry point."""
    if spec == "dense" and dense_model is not None:
        return Dense.from_npz(dense_model)
    if spec in BUILTINS:
        return BUILTINS[spec]()
    if ":" in spec:
        return load_import_path(spec)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == spec:
            try:
                obj = ep.load()
            except Exception as exc:
                raise OpLoadError(
                    f"entry point {spec!r} ({ep.value}) failed to load: {exc}"
                ) from exc
            return _as_op(obj, f"entry point {spec!r} ({ep.value})")
    known = sorted(BUILTINS) + entry_point_names()
    raise UnknownOp(
        f"no op named {spec!r}; known ops: {', '.join(known)}; "
        "or give an import path package.module:attribute"
    )


class OpTable:
    """The ops one worker serves, numbered for the slot header's ``op`` field.

    The worker's own op (``--op``) is id 0 and the default for messages without
    an ``op`` field; the built-ins follow, so one queue can serve several ops.
    An op that cannot work with the configured slot size stays in the table as
    *unusable*, so a message asking for it gets an error result saying why.
    """

    def __init__(self, ops: Iterable[Op], payload_capacity: int) -> None:
        self.ops: list[Op] = []
        self.ids: dict[str, int] = {}
        self.unusable: dict[str, str] = {}
        for op in ops:
            if op.name in self.ids or op.name in self.unusable:
                continue
            problem = op.check_capacity(payload_capacity)
            if problem is not None:
                if not self.ops:
                    raise ConfigError(problem)
                self.unusable[op.name] = problem
                continue
            self.ids[op.name] = len(self.ops)
            self.ops.append(op)
        if len(self.ops) > MAX_OPS:
            raise ConfigError(f"at most {MAX_OPS} ops per worker")
        self.payload_capacity = payload_capacity
        self.ids_by_bytes = {name.encode(): i for name, i in self.ids.items()}

    @classmethod
    def for_worker(
        cls, spec: str, payload_capacity: int, *, dense_model: str | None = None
    ) -> OpTable:
        default = load_op(spec, dense_model=dense_model)
        others = (load_op(name, dense_model=dense_model) for name in BUILTINS)
        return cls([default, *others], payload_capacity)

    @property
    def default(self) -> Op:
        return self.ops[0]

    def __getitem__(self, op_id: int) -> Op:
        return self.ops[op_id]

    def __len__(self) -> int:
        return len(self.ops)
