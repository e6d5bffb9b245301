"""Backend discovery: entry points, dotted paths, CLLM_BACKEND, and clear errors."""

from __future__ import annotations

import pytest

from cllm_spec import registry
from cllm_spec.errors import BackendError, CllmError


def test_numpy_is_registered_and_loads():
    assert "numpy" in registry.available_backends()
    backend = registry.get_backend("numpy")
    assert backend.name == "numpy"
    assert registry.missing_functions(backend) == []


def test_dotted_module_path_loads_the_same_module():
    assert registry.get_backend("cllm_numpy") is registry.get_backend("numpy")


def _loads(name: str) -> bool:
    try:
        registry.get_backend(name)
    except BackendError:
        return False
    return True


def test_default_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("CLLM_BACKEND", "  cllm_numpy ")
    assert registry.default_backend_name() == "cllm_numpy"
    fallback = "c" if _loads("c") else "numpy"
    monkeypatch.setenv("CLLM_BACKEND", "")
    assert registry.default_backend_name() == fallback
    monkeypatch.delenv("CLLM_BACKEND")
    assert registry.default_backend_name() == fallback


def test_default_prefers_c_and_falls_back_to_numpy(monkeypatch):
    monkeypatch.delenv("CLLM_BACKEND", raising=False)
    real = registry.get_backend

    def without_c(name=None):
        if name == "c":
            raise BackendError("c is not built here")
        return real(name)

    monkeypatch.setattr(registry, "get_backend", without_c)
    assert registry.default_backend_name() == "numpy"
    monkeypatch.setattr(registry, "get_backend", lambda name=None: object())
    assert registry.default_backend_name() == "c"


def test_unknown_backend_names_the_available_ones():
    with pytest.raises(BackendError, match="available backends: .*numpy") as info:
        registry.get_backend("no_such_backend_xyz")
    assert isinstance(info.value, ImportError) and isinstance(info.value, CllmError)
    assert isinstance(info.value.__cause__, ModuleNotFoundError)


def test_invalid_name_is_an_error_not_a_crash():
    with pytest.raises(BackendError, match="could not be loaded"):
        registry.get_backend("not a module!")


def test_module_without_the_protocol_is_rejected(tmp_path, monkeypatch):
    (tmp_path / "emptyb.py").write_text("name = 'emptyb'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(BackendError, match="missing .*softmax_forward"):
        registry.get_backend("emptyb")


def test_describe_backends_reports_every_registered_backend():
    rows = {row["name"]: row for row in registry.describe_backends()}
    assert rows["numpy"]["available"] is True
    assert rows["numpy"]["version"]
    assert "numpy" in rows["numpy"]["build_info"]


def test_registered_only_never_imports_a_module(tmp_path, monkeypatch):
    """A name read from a file must not run code: the module is not imported."""
    marker = tmp_path / "imported"
    (tmp_path / "planted_backend.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(BackendError, match="'planted_backend' is not a registered"):
        registry.get_backend("planted_backend", registered_only=True)
    assert not marker.exists()
    assert registry.get_backend("numpy", registered_only=True).name == "numpy"
    with pytest.raises(BackendError, match="'cllm_numpy' is not a registered"):
        registry.get_backend("cllm_numpy", registered_only=True)
