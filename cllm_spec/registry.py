"""Finding and loading backends.

A backend is named in one of three ways, tried in this order:

1. a name registered in the entry-point group ``cllm_spec.backends``
   (``numpy`` and, when built, ``c`` are registered by this distribution);
2. a dotted module path, e.g. ``mypkg.mybackend``;
3. nothing: :func:`default_backend_name`, the one rule every command and the
   conformance suite use: ``$CLLM_BACKEND`` if set, else the first of
   :data:`PREFERRED_BACKENDS` that loads (``c``, the fast one, when it was
   compiled; else ``numpy``, which needs no compiler).

A backend that cannot be found or imported raises :class:`BackendError` naming the
available backends and the underlying import error; it is never silently replaced.

A name read from a file (the backend a checkpoint's run recorded) is looked up
with ``registered_only=True``: among the registered names only, never imported
as a module path, since importing runs the module's code and a checkpoint's
metadata is anyone's to edit. Only a name the user gives (``--backend``,
``$CLLM_BACKEND``, ``--set train.backend=``) may be a module path.
"""

from __future__ import annotations

import importlib
import os
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from cllm_spec.errors import BackendError, CllmError
from cllm_spec.protocols import COMPONENT_FUNCTIONS

ENTRY_POINT_GROUP = "cllm_spec.backends"
ENV_VAR = "CLLM_BACKEND"
#: The order in which :func:`default_backend_name` tries backends; the last one
#: is pure NumPy and always loads.
PREFERRED_BACKENDS = ("c", "numpy")


def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_backends() -> list[str]:
    """Names registered in the entry-point group, sorted (whether or not they load)."""
    return sorted(_entry_points())


def default_backend_name() -> str:
    """The backend used when none is named (``cllm train``, ``generate``, ``eval``,
    ``info`` and ``pytest conformance`` alike).

    ``$CLLM_BACKEND`` if set and non-empty; else the first name of
    :data:`PREFERRED_BACKENDS` that loads.
    """
    chosen = os.environ.get(ENV_VAR, "").strip()
    if chosen:
        return chosen
    for name in PREFERRED_BACKENDS[:-1]:
        try:
            get_backend(name)
        except BackendError:
            continue
        return name
    return PREFERRED_BACKENDS[-1]


def missing_functions(backend: Any) -> list[str]:
    """The protocol callables ``backend`` lacks (empty for a complete backend)."""
    return [
        name
        for names in COMPONENT_FUNCTIONS.values()
        for name in names
        if not callable(getattr(backend, name, None))
    ]


def _load(name: str) -> Any:
    eps = _entry_points()
    if name in eps:
        return eps[name].load()
    if "." in name or name.isidentifier():
        return importlib.import_module(name)
    raise ModuleNotFoundError(f"no module named {name!r}")


@cache
def get_backend(name: str | None = None, *, registered_only: bool = False) -> Any:
    """Return the backend called ``name`` (default: :func:`default_backend_name`).

    With ``registered_only`` a name that is not registered is an error, never
    imported as a module (module docstring).

    Raises:
        BackendError: unknown name, failed import, or a module that lacks part of
            the protocol. The message lists the available backends and the cause.
    """
    name = name or default_backend_name()
    known = ", ".join(available_backends()) or "(none registered)"
    if registered_only and name not in _entry_points():
        raise BackendError(
            f"backend {name!r} is not a registered backend (registered: {known}); "
            "a backend named in a file is never imported as a module",
            hint="choose a backend with --backend NAME",
        )
    try:
        backend = _load(name)
    except CllmError as exc:  # the backend's own explanation, with its fix
        raise BackendError(
            f"backend {name!r} could not be loaded: {exc.message}; "
            f"available backends: {known}",
            hint=exc.hint_text or None,
        ) from exc
    except Exception as exc:  # an import can fail in any way; report, never hide
        raise BackendError(
            f"backend {name!r} could not be loaded: {type(exc).__name__}: {exc}; "
            f"available backends: {known}"
        ) from exc
    missing = missing_functions(backend)
    if missing:
        raise BackendError(
            f"backend {name!r} does not implement the protocol: missing "
            f"{', '.join(missing)}; available backends: {known}"
        )
    return backend


def describe_backends() -> list[dict[str, Any]]:
    """One row per registered backend: name, version, availability, build info."""
    rows = []
    for name in available_backends():
        row: dict[str, Any] = {"name": name}
        try:
            backend = get_backend(name)
        except BackendError as exc:
            row.update(
                available=False, version="", reason=exc.message, fix=exc.hint_text
            )
        else:
            row.update(
                available=True,
                version=backend.version,
                build_info=backend.build_info(),
            )
        rows.append(row)
    return rows
