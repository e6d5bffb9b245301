"""The conformance plugin itself: backend selection, strictness and the report.

Each test runs pytest in a subprocess on the fast protocol checks, from a
temporary working directory, so option handling is tested as users meet it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cllm_spec.protocols import COMPONENT_FUNCTIONS

REPO = Path(__file__).resolve().parents[1]
PROTOCOL_TESTS = str(REPO / "conformance" / "test_protocol.py")


def run_pytest(tmp_path: Path, *args: str, env: dict[str, str] | None = None):
    # The caller's CLLM_BACKEND must not leak into runs that test the default.
    full_env = {k: v for k, v in os.environ.items() if k != "CLLM_BACKEND"}
    full_env.update(env or {})
    full_env["PYTHONPATH"] = os.pathsep.join(
        [str(tmp_path), full_env.get("PYTHONPATH", "")]
    )
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=tmp_path,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def fake_backend(tmp_path: Path) -> str:
    """A backend whose build_info is empty: exactly one protocol test fails."""
    (tmp_path / "fakeb.py").write_text(
        textwrap.dedent(
            """
            from cllm_numpy import *  # noqa: F403
            from cllm_numpy import dtypes, version  # noqa: F401

            name = "fakeb"


            def build_info():
                return {}
            """
        )
    )
    return "fakeb"


def test_unknown_backend_is_an_error_naming_the_available_ones(tmp_path):
    result = run_pytest(tmp_path, PROTOCOL_TESTS, "--backend=nonexistent")
    assert result.returncode != 0
    assert "available backends: " in result.stderr
    assert "numpy" in result.stderr.split("available backends: ", 1)[1]


def test_unknown_backend_from_the_environment_is_an_error(tmp_path):
    result = run_pytest(tmp_path, PROTOCOL_TESTS, env={"CLLM_BACKEND": "nonexistent"})
    assert result.returncode != 0
    assert "'nonexistent' could not be loaded" in result.stderr


def test_broken_backend_reports_the_import_error(tmp_path):
    (tmp_path / "brokenb.py").write_text("raise RuntimeError('compiler missing')\n")
    result = run_pytest(tmp_path, PROTOCOL_TESTS, "--backend=brokenb")
    assert result.returncode != 0
    assert "RuntimeError: compiler missing" in result.stderr


def test_incomplete_backend_names_the_missing_functions(tmp_path):
    (tmp_path / "halfb.py").write_text("name = 'halfb'\ndef softmax_forward(x): ...\n")
    result = run_pytest(tmp_path, PROTOCOL_TESTS, "--backend=halfb")
    assert result.returncode != 0
    assert "missing" in result.stderr and "cross_entropy_forward" in result.stderr


def test_backend_from_the_environment_runs_from_any_directory(tmp_path):
    result = run_pytest(tmp_path, PROTOCOL_TESTS, env={"CLLM_BACKEND": "numpy"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "cllm backend: numpy" in result.stdout


def test_a_failing_backend_fails_the_run(tmp_path, fake_backend):
    result = run_pytest(tmp_path, PROTOCOL_TESTS, f"--backend={fake_backend}")
    assert result.returncode == 1
    assert "1 failed" in result.stdout


def write_expectations(tmp_path: Path, name: str, body: str) -> dict[str, str]:
    folder = tmp_path / "expect"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.toml").write_text(textwrap.dedent(body))
    return {"CLLM_EXPECTATIONS_DIR": str(folder)}


def test_expected_failure_listed_in_expectations_passes_the_run(tmp_path, fake_backend):
    env = write_expectations(
        tmp_path,
        fake_backend,
        """
        [[expect]]
        test = "test_protocol.py::test_backend_metadata[fakeb]"
        kind = "xfail"
        reason = "this backend reports no build info"
        """,
    )
    result = run_pytest(tmp_path, PROTOCOL_TESTS, f"--backend={fake_backend}", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 xfailed" in result.stdout


def test_unexpected_pass_fails_the_run(tmp_path):
    env = write_expectations(
        tmp_path,
        "numpy",
        """
        [[expect]]
        test = "test_protocol.py::test_backend_metadata[numpy]"
        kind = "xfail"
        reason = "claimed broken, but it works"
        """,
    )
    result = run_pytest(tmp_path, PROTOCOL_TESTS, "--backend=numpy", env=env)
    assert result.returncode == 1
    assert "XPASS(strict)" in result.stdout


def test_unmatched_expectation_fails_the_run(tmp_path):
    env = write_expectations(
        tmp_path,
        "numpy",
        """
        [[expect]]
        test = "test_protocol.py::test_that_does_not_exist*"
        kind = "xfail"
        reason = "stale entry"
        """,
    )
    result = run_pytest(tmp_path, PROTOCOL_TESTS, "--backend=numpy", env=env)
    assert result.returncode != 0
    assert "matches no test" in result.stdout + result.stderr


def test_expectation_without_reason_is_rejected(tmp_path):
    env = write_expectations(
        tmp_path,
        "numpy",
        """
        [[expect]]
        test = "test_protocol.py::test_backend_metadata[numpy]"
        kind = "skip"
        """,
    )
    result = run_pytest(tmp_path, PROTOCOL_TESTS, "--backend=numpy", env=env)
    assert result.returncode != 0
    assert "needs 'test' and 'reason'" in result.stderr


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_report_has_one_row_per_component(tmp_path, fake_backend, workers):
    report = tmp_path / "report.json"
    result = run_pytest(
        tmp_path,
        PROTOCOL_TESTS,
        f"--backend={fake_backend}",
        f"--cllm-report={report}",
        *workers,
    )
    assert result.returncode == 1
    data = json.loads(report.read_text())
    assert data["backends"][0]["name"] == "fakeb"
    (row,) = data["components"]
    assert row["backend"] == "fakeb" and row["component"] == "protocol"
    assert row["failed"] == 1
    n_functions = sum(len(names) for names in COMPONENT_FUNCTIONS.values())
    assert row["passed"] == n_functions + 2 - 1  # signatures + 2 metadata tests


def test_backend_all_runs_every_registered_backend(tmp_path):
    result = run_pytest(tmp_path, PROTOCOL_TESTS, "--backend=all", "-v")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "test_backend_metadata[numpy] PASSED" in result.stdout


def test_numeric_failure_message_says_what_where_and_how_to_reproduce(tmp_path):
    (tmp_path / "skewb.py").write_text(
        textwrap.dedent(
            """
            from cllm_numpy import *  # noqa: F403
            from cllm_numpy import build_info, dtypes, version  # noqa: F401
            from cllm_numpy import softmax_forward as _ref

            name = "skewb"


            def softmax_forward(x):
                y, cache = _ref(x)
                y = y.copy()
                y.reshape(-1)[-1] += 1e-3
                return y, cache
            """
        )
    )
    tests = str(REPO / "conformance" / "test_losses_softmax.py")
    result = run_pytest(
        tmp_path,
        tests,
        "--backend=skewb",
        "-k",
        "softmax_forward_backward_match_oracle",
    )
    assert result.returncode == 1
    out = result.stdout
    assert "conformance mismatch: losses.softmax" in out
    assert "backend=skewb dtype=float32 shape=" in out
    assert re.search(r"max abs error: 1\.0\d*e-03 at index \(\d+(, \d+)*\)", out)
    assert "max rel error:" in out
    assert "tolerance: rtol=1e-05 atol=2e-06 (table losses/*/float32" in out
    assert "headroom:" in out
    assert "reproduce: pytest 'conformance/test_losses_softmax.py::" in out
    assert "--backend=skewb --cllm-seed=0" in out


@pytest.fixture
def reexporting_backend(tmp_path: Path) -> str:
    """A backend that re-exports numpy, ``name`` included, with a wrong softmax."""
    (tmp_path / "mybk.py").write_text(
        textwrap.dedent(
            """
            import cllm_numpy as _np
            from cllm_numpy import *  # noqa: F403
            from cllm_numpy import build_info, dtypes, name, version  # noqa: F401


            def softmax_forward(x):
                out, cache = _np.softmax_forward(x)
                return out + 1e-3, cache
            """
        )
    )
    return "mybk"


LOSSES_TESTS = str(REPO / "conformance" / "test_losses_softmax.py")


def test_backend_is_reported_by_the_name_it_was_selected_by(
    tmp_path, reexporting_backend
):
    result = run_pytest(
        tmp_path,
        LOSSES_TESTS,
        "-k",
        "softmax_golden_rows",
        f"--backend={reexporting_backend}",
    )
    assert result.returncode == 1, result.stdout
    assert "[mybk-float32]" in result.stdout and "[numpy-" not in result.stdout
    assert "backend=mybk" in result.stdout and "--backend=mybk" in result.stdout
    assert "--backend=numpy" not in result.stdout


def test_failures_lead_with_the_message_and_hide_the_suites_frames(
    tmp_path, reexporting_backend
):
    args = [LOSSES_TESTS, "-k", "softmax_golden_rows", "--backend=mybk"]
    result = run_pytest(tmp_path, *args)
    failures = result.stdout.split("= FAILURES =", 1)[1].split("short test summary")[0]
    blocks = re.split(r"_{5,} test_\S+ _{5,}", failures)[1:]
    assert len(blocks) == 2  # float32 and float64
    for block in blocks:
        lines = block.strip().strip("=").strip().splitlines()
        assert lines[0].startswith("conformance mismatch: losses.")
        assert "reproduce: pytest" in block
        assert re.search(r"at conformance/test_losses_softmax\.py:\d+", block)
        assert "conftest.py" not in block and "def close" not in block
        assert len(lines) < 15
    full = run_pytest(tmp_path, *args, "--cllm-full-trace")
    assert "conftest.py" in full.stdout


def run_cllm(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CLLM_BACKEND"}
    return subprocess.run(
        [sys.executable, "-m", "cllm_spec.cli", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cllm_conformance_runs_the_installed_suite(tmp_path):
    result = run_cllm(
        tmp_path, "conformance", "--backend", "numpy", "-k", "metadata", "-q"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^1 passed", result.stdout, re.M)
    assert not (tmp_path / ".pytest_cache").exists()
    # pytest's arguments in any order, and the backend's label in the ids
    result = run_cllm(
        tmp_path, "conformance", "-k", "metadata", "--backend=numpy", "-v"
    )
    assert "test_backend_metadata[numpy] PASSED" in result.stdout


def test_cllm_conformance_with_a_missing_backend_is_a_usage_error(tmp_path):
    result = run_cllm(tmp_path, "conformance", "--backend", "nonexistent")
    assert result.returncode == 4
    assert "available backends: " in result.stderr


def test_other_commands_still_refuse_unknown_arguments(tmp_path):
    result = run_cllm(tmp_path, "backends", "--bogus")
    assert result.returncode == 2 and "unrecognized arguments: --bogus" in result.stderr


@pytest.mark.parametrize(
    ("nodeid", "component"),
    [
        ("conformance/test_optim.py::test_x[c]", "optim"),
        ("conformance/test_attention_kv_cache.py::test_x", "attention"),
        ("conformance/test_ffn_layernorm.py::test_x[c-1]", "ffn"),
        # the model is composed in the spec, and still tested in parts
        ("conformance/test_model_decoding.py::test_x[c-float32]", "model"),
        # a row of its own, not a part of model
        ("conformance/test_model_groups.py::test_x", "model_groups"),
        ("conformance/test_protocol.py::test_x", "protocol"),
    ],
)
def test_component_of_maps_part_files_to_their_component(
    nodeid: str, component: str
) -> None:
    """A component tested in parts (test_<component>_<part>.py) keeps its
    component's tolerance and report row."""
    from conformance.conftest import component_of

    assert component_of(nodeid) == component
