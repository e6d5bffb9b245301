"""The ``cllm`` console script, run as a subprocess the way users run it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import cllm_spec


def cllm(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("cllm")
    cmd = [exe] if exe else [sys.executable, "-m", "cllm_spec.cli"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=60)


def test_version():
    result = cllm("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"cllm {cllm_spec.__version__}"


def test_backends_lists_numpy_as_available():
    result = cllm("backends")
    assert result.returncode == 0, result.stderr
    line = next(ln for ln in result.stdout.splitlines() if " numpy " in ln)
    assert "available" in line and "unavailable" not in line


def test_backends_json():
    result = cllm("backends", "--json")
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["numpy"]["available"] is True


def test_no_command_prints_help_and_fails():
    result = cllm()
    assert result.returncode == 2
    assert "usage: cllm" in result.stderr


def test_spec_warnings_are_one_line_and_others_go_to_python(capsys):
    import io
    import warnings

    from cllm_spec.cli import one_line_warnings
    from cllm_spec.data import CorpusWarning

    seen = []
    show = one_line_warnings("cllm train", lambda *a: seen.append(a))
    out = io.StringIO()
    show(CorpusWarning("corpus file x is not valid UTF-8"), CorpusWarning, "f.py", 3)
    show("to a file", CorpusWarning, "f.py", 3, out)
    show(DeprecationWarning("old"), DeprecationWarning, "f.py", 7)
    err = capsys.readouterr().err
    assert err == "cllm train: warning: corpus file x is not valid UTF-8\n"
    assert out.getvalue() == "cllm train: warning: to a file\n"
    assert len(seen) == 1 and seen[0][1] is DeprecationWarning
    assert warnings.showwarning is not show  # main() installs it per command only
