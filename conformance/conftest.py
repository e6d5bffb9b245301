"""The conformance plugin: backend selection, fixtures, expectations and report.

    pytest conformance --backend=numpy          one backend
    CLLM_BACKEND=c pytest conformance           the same, from the environment
    pytest conformance --backend=all            every registered backend
    pytest conformance --cllm-report=out.json   one JSON row per component

A backend that cannot load stops the run with a usage error that lists the
available backends; it is never skipped.

Fixtures for tests:

- ``backend``: the backend under test (parametrized, with ``dtype``, over the
  dtypes the backend declares; test ids read ``[numpy-float32]``);
- ``oracle``: the NumPy reference backend, to be called in float64;
- ``rng``: a ``numpy.random.Generator`` seeded from ``--cllm-seed`` and the test id;
- ``check``: the comparator bound to this test (``check.close``, ``check.exact``,
  ``check.gradcheck``).
"""

from __future__ import annotations

import json
import os
import re
import tomllib
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from cllm_spec.errors import BackendError
from cllm_spec.protocols import COMPONENT_FUNCTIONS
from cllm_spec.registry import available_backends, default_backend_name, get_backend
from cllm_spec.tolerances import TABLE, Tolerance, tolerance
from conformance.comparator import compare, describe_failure
from conformance.gradcheck import numerical_vjp

# a helper that asserts on its tests' behalf, rewritten like a test module so a
# failing assert there shows the values it compared
pytest.register_assert_rewrite("conformance.batching_helpers")

HERE = Path(__file__).parent
# Overridable so the suite's own tests can check the strict-expectations rules.
EXPECTATIONS_DIR = Path(os.environ.get("CLLM_EXPECTATIONS_DIR", HERE / "expectations"))
ORACLE = "numpy"

# ``check`` and ``rng`` are function-scoped by design (they carry the test id);
# sharing them across a Hypothesis test's examples is what we want.
_SUPPRESS = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    max_examples=30,
    print_blob=True,
    suppress_health_check=_SUPPRESS,
)
settings.register_profile(
    "dev", deadline=None, max_examples=15, suppress_health_check=_SUPPRESS
)
settings.register_profile(
    "thorough", deadline=None, max_examples=500, suppress_health_check=_SUPPRESS
)
settings.load_profile(os.environ.get("CLLM_HYPOTHESIS_PROFILE", "ci"))

_backends_key = pytest.StashKey[list[tuple[str, Any]]]()
_expectations_key = pytest.StashKey[dict[str, list[dict[str, Any]]]]()
_rows_key = pytest.StashKey[dict[str, dict[str, Any]]]()
_LABELS: dict[int, str] = {}
_HIDE_OWN_FRAMES = [True]  # False with --cllm-full-trace


def label(backend: Any) -> str:
    """The name a backend was selected by (``--backend``, ``$CLLM_BACKEND`` or the
    registry's default), used in test ids, messages, expectations and reports.

    Never the module's own ``name`` attribute: a backend that re-exports another
    backend's functions (and its ``name``) is still reported as itself, and its
    repro commands select it again.
    """
    return _LABELS.get(id(backend), str(getattr(backend, "name", "?")))


# ------------------------------------------------------------ options ------
def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("cllm", "CLLM conformance")
    group.addoption(
        "--backend",
        default=None,
        help="backend to check: a registered name, a dotted module path, or 'all' "
        "(default: $CLLM_BACKEND, else numpy)",
    )
    group.addoption(
        "--cllm-seed",
        type=int,
        default=int(os.environ.get("CLLM_SEED", "0")),
        help="global seed; each test derives its own from this and its id",
    )
    group.addoption(
        "--cllm-full-trace",
        action="store_true",
        help="show full tracebacks, the suite's own frames included (default: a "
        "failure shows its message and the test line that raised it)",
    )
    group.addoption(
        "--cllm-report",
        default=None,
        metavar="PATH",
        help="write a JSON report with one row per component",
    )


def _requested(config: pytest.Config) -> list[str]:
    name = config.getoption("--backend") or default_backend_name()
    return available_backends() if name == "all" else [name]


def pytest_configure(config: pytest.Config) -> None:
    loaded = []
    for name in _requested(config):
        try:
            loaded.append((name, get_backend(name)))
        except BackendError as exc:
            raise pytest.UsageError(f"--backend={name}: {exc}") from exc
    config.stash[_backends_key] = loaded
    _LABELS.update({id(b): name for name, b in loaded})
    config.stash[_expectations_key] = {
        name: _load_expectations(name) for name, _ in loaded
    }
    config.stash[_rows_key] = {}
    # Short tracebacks by default: a failure leads with the comparator's
    # message, not with the suite's own frames (--cllm-full-trace for those).
    _HIDE_OWN_FRAMES[0] = not config.getoption("--cllm-full-trace")
    if config.option.tbstyle == "auto" and _HIDE_OWN_FRAMES[0]:
        config.option.tbstyle = "short"


def pytest_report_header(config: pytest.Config) -> list[str]:
    lines = []
    for name, b in config.stash[_backends_key]:
        dts = ", ".join(np.dtype(d).name for d in b.dtypes)
        lines.append(f"cllm backend: {name} {b.version} [{dts}] {b.build_info()}")
    lines.append(f"cllm seed: {config.getoption('--cllm-seed')}")
    return lines


# ------------------------------------------------------- parametrizing -----
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    backends = metafunc.config.stash[_backends_key]
    names = metafunc.fixturenames
    if "backend" in names and "dtype" in names:
        pairs = [(b, np.dtype(d)) for _, b in backends for d in b.dtypes]
        ids = [f"{label(b)}-{d.name}" for b, d in pairs]
        metafunc.parametrize(("backend", "dtype"), pairs, ids=ids, scope="session")
    elif "backend" in names:
        metafunc.parametrize(
            "backend",
            [b for _, b in backends],
            ids=[name for name, _ in backends],
            scope="session",
        )


@pytest.fixture(scope="session")
def oracle() -> Any:
    """The float64 reference backend (found through the registry, like any other)."""
    return get_backend(ORACLE)


def _seed(config: pytest.Config, nodeid: str) -> int:
    return zlib.crc32(f"{config.getoption('--cllm-seed')}:{nodeid}".encode())


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> np.random.Generator:
    return np.random.default_rng(_seed(request.config, request.node.nodeid))


#: Rows with tolerances or a report of their own that no backend function names:
#: the model is composed in the spec of a backend's kernels, and its grouped pass
#: (``cllm_spec.model_groups``) is checked apart from it.
COMPOSED = ("model", "model_groups")


def component_of(nodeid: str) -> str:
    """``conformance/test_optim_golden.py::test_x[...]`` -> ``optim``.

    A component tested in several files names them ``test_<component>_<part>.py``:
    ``conformance/test_attention_kv_cache.py::test_x`` -> ``attention``. The
    longest name wins, so ``test_model_groups.py`` is not a part of ``model``.
    """
    stem = Path(nodeid.split("::", 1)[0]).stem.removeprefix("test_")
    names = [
        name
        for name in (*COMPONENT_FUNCTIONS, *COMPOSED)
        if stem == name or stem.startswith(f"{name}_")
    ]
    return max(names, key=len, default=stem)


# ------------------------------------------------------------- checker -----
class Checker:
    """Numeric assertions bound to one test: they know how to describe a failure."""

    def __init__(self, request: pytest.FixtureRequest) -> None:
        self.node = request.node
        self.config = request.config
        self.component = component_of(request.node.nodeid)
        params = getattr(request.node, "callspec", None)
        backend = params.params.get("backend") if params else None
        self.backend_name = "?" if backend is None else label(backend)

    def repro(self) -> str:
        return (
            f"pytest '{self.node.nodeid}' --backend={self.backend_name} "
            f"--cllm-seed={self.config.getoption('--cllm-seed')}"
        )

    def _record(self, headroom: float) -> None:
        self.node.user_properties.append(("cllm_headroom", headroom))

    def close(
        self,
        actual: Any,
        expected: Any,
        output: str,
        *,
        tol: Tolerance | None = None,
        dtype: Any = None,
    ) -> None:
        """``actual`` (backend) matches ``expected`` (reference) within tolerance.

        ``dtype`` is the dtype ``actual`` must have (default: its own); the
        tolerance is looked up for it unless ``tol`` is given.
        """
        __tracebackhide__ = _HIDE_OWN_FRAMES[0]  # show the test's line, not this
        a, e = np.asarray(actual), np.asarray(expected)
        where = (
            f"{self.component}.{output} [backend={self.backend_name} "
            f"dtype={a.dtype} shape={a.shape}]"
        )
        if dtype is not None and a.dtype != np.dtype(dtype):
            pytest.fail(
                f"{where}: dtype {a.dtype}, expected {np.dtype(dtype)}\n"
                f"  reproduce: {self.repro()}"
            )
        if a.shape != e.shape:
            pytest.fail(
                f"{where}: shape {a.shape}, expected {e.shape}\n"
                f"  reproduce: {self.repro()}"
            )
        source = "explicit" if tol is not None else self._source(output, a.dtype)
        tol = tol or tolerance(self.component, output, a.dtype)
        result = compare(a, e, tol)
        self._record(result.headroom)
        if not result.ok:
            pytest.fail(
                describe_failure(
                    result,
                    a,
                    e,
                    tol,
                    where=where,
                    tol_source=source,
                    repro=self.repro(),
                )
            )

    def _source(self, output: str, dtype: np.dtype) -> str:
        for key in (
            (self.component, output, dtype.name),
            (self.component, "*", dtype.name),
        ):
            if key in TABLE:
                return "table " + "/".join(key)
        return f"{dtype.name} default"

    def exact(self, actual: Any, expected: Any, output: str) -> None:
        """Bitwise equality: ints, determinism, queue order."""
        __tracebackhide__ = _HIDE_OWN_FRAMES[0]  # show the test's line, not this
        a, e = np.asarray(actual), np.asarray(expected)
        if a.shape != e.shape or a.dtype != e.dtype or a.tobytes() != e.tobytes():
            diff = (
                "" if a.shape != e.shape else f", {int(np.sum(a != e))} elements differ"
            )
            pytest.fail(
                f"conformance mismatch (exact): {self.component}.{output} "
                f"[backend={self.backend_name}] actual {a.dtype}{a.shape} vs expected "
                f"{e.dtype}{e.shape}{diff}\n  reproduce: {self.repro()}"
            )

    def gradcheck(
        self,
        f: Callable[..., np.ndarray],
        args: list[np.ndarray],
        dy: np.ndarray,
        analytic: dict[int, np.ndarray],
        output: str,
    ) -> None:
        """Each ``analytic[i]`` equals the finite-difference gradient of args[i]."""
        __tracebackhide__ = _HIDE_OWN_FRAMES[0]  # show the test's line, not this
        tol = tolerance("gradcheck", output, np.float64)
        for index, grad in analytic.items():
            numeric = numerical_vjp(f, args, index, dy)
            a = np.asarray(grad)
            where = f"{self.component}.{output} d/darg{index} vs finite differences"
            result = compare(a, numeric, tol)
            self._record(result.headroom)
            if not result.ok:
                pytest.fail(
                    describe_failure(
                        result,
                        a,
                        numeric,
                        tol,
                        where=where,
                        tol_source="table gradcheck/*/float64",
                        repro=self.repro(),
                    )
                )


@pytest.fixture
def check(request: pytest.FixtureRequest) -> Checker:
    return Checker(request)


# -------------------------------------------------------- expectations -----
def _load_expectations(name: str) -> list[dict[str, Any]]:
    """``conformance/expectations/<backend>.toml``: ``[[expect]]`` tables with
    ``test`` (fnmatch pattern on the node id without ``conformance/``), ``kind``
    (xfail | skip) and a required ``reason``."""
    path = EXPECTATIONS_DIR / f"{name}.toml"
    if not path.exists():
        return []
    with path.open("rb") as fh:
        entries = tomllib.load(fh).get("expect", [])
    for entry in entries:
        if not entry.get("test") or not entry.get("reason"):
            raise pytest.UsageError(f"{path}: every entry needs 'test' and 'reason'")
        if entry.get("kind", "xfail") not in ("xfail", "skip"):
            raise pytest.UsageError(f"{path}: kind must be xfail or skip: {entry}")
    return entries


def _matches(nodeid: str, pattern: str) -> bool:
    """Glob match where only ``*`` and ``?`` are wild: test ids contain brackets."""
    regex = re.escape(pattern).replace(r"\*", ".*").replace(r"\?", ".")
    return re.fullmatch(regex, nodeid) is not None


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    expectations = config.stash[_expectations_key]
    used: set[tuple[str, int]] = set()
    modules = {Path(item.nodeid.split("::")[0]).name for item in items}
    for item in items:
        callspec = getattr(item, "callspec", None)
        backend = callspec.params.get("backend") if callspec else None
        if backend is None:
            continue
        local = item.nodeid.removeprefix("conformance/")
        name = label(backend)
        for i, entry in enumerate(expectations.get(name, [])):
            if _matches(local, entry["test"]):
                used.add((name, i))
                reason = f"{name} expectation: {entry['reason']}"
                if entry.get("kind", "xfail") == "skip":
                    item.add_marker(pytest.mark.skip(reason=reason))
                else:
                    item.add_marker(pytest.mark.xfail(reason=reason, strict=True))
    for name, entries in expectations.items():
        for i, entry in enumerate(entries):
            module = entry["test"].split("::")[0]
            if (name, i) not in used and module in modules:
                raise pytest.UsageError(
                    f"expectations/{name}.toml: entry {entry['test']!r} matches no "
                    "test; remove it or fix its pattern"
                )


# ------------------------------------------------------------ failures -----
@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A comparator failure is reported as its message and the test line only."""
    report = yield
    excinfo = call.excinfo
    if (
        report.failed
        and excinfo is not None
        and excinfo.errisinstance(pytest.fail.Exception)
        and "reproduce: " in str(excinfo.value)
        and not item.config.getoption("--cllm-full-trace")
    ):
        where = ""
        for entry in reversed(excinfo.traceback):
            if Path(entry.path) == Path(item.path):
                where = f"\n  at {item.nodeid.split('::')[0]}:{entry.lineno + 1}"
                break
        report.longrepr = f"{excinfo.value}{where}"
    return report


# -------------------------------------------------------------- report -----
def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    config = _CONFIG.get("config")
    if config is None or not report.nodeid.startswith("conformance/"):
        return
    if report.when != "call" and not (
        report.when == "setup" and report.outcome != "passed"
    ):
        return
    rows = config.stash[_rows_key]
    row = rows.setdefault(
        f"{_backend_of(report.nodeid, config)}:{component_of(report.nodeid)}",
        {"passed": 0, "failed": 0, "skipped": 0, "xfailed": 0, "worst_headroom": 0.0},
    )
    if hasattr(report, "wasxfail"):
        row["xfailed" if report.skipped else "failed"] += 1
    else:
        row[report.outcome] += 1
    for key, value in report.user_properties:
        if key == "cllm_headroom" and np.isfinite(value):
            row["worst_headroom"] = max(row["worst_headroom"], float(value))


_CONFIG: dict[str, pytest.Config] = {}


def _backend_of(nodeid: str, config: pytest.Config) -> str:
    """The backend a test ran on, read from its parametrization id ``[numpy-...]``."""
    params = nodeid.rsplit("[", 1)[-1] if "[" in nodeid else ""
    for name, _ in config.stash[_backends_key]:
        if params == f"{name}]" or params.startswith(f"{name}-"):
            return name
    return "-"


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    _CONFIG["config"] = session.config


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    path = config.getoption("--cllm-report")
    if not path or hasattr(config, "workerinput"):
        return
    report = {
        "backends": [
            {"name": n, "version": b.version, "build_info": b.build_info()}
            for n, b in config.stash[_backends_key]
        ],
        "seed": config.getoption("--cllm-seed"),
        "exitstatus": int(exitstatus),
        "components": [
            {"backend": key.split(":")[0], "component": key.split(":")[1], **row}
            for key, row in sorted(config.stash[_rows_key].items())
        ],
    }
    Path(path).write_text(json.dumps(report, indent=2) + "\n")
