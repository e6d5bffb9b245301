"""Build hook only: cffi compiles the C backend (cllm_c._ffi) at install time.

Everything else is in pyproject.toml; cffi's out-of-line API mode has no
pyproject-only configuration.

The extension is optional: on a machine without a working C compiler the
install still succeeds, with the NumPy backend only, and ``cllm backends``
reports ``c`` as unavailable with the reason and the fix. Set
``CLLM_C_REQUIRED=1`` to make a failed compile fail the install instead (the
C backend's own test environments do).
"""

import os

from setuptools import setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """A build_ext whose extensions may fail to compile, unless required."""

    def build_extensions(self):
        required = os.environ.get("CLLM_C_REQUIRED", "0") not in ("", "0")
        for ext in self.extensions:
            # setuptools skips an optional extension that fails to build, with
            # a warning, instead of aborting the whole install
            ext.optional = not required
        super().build_extensions()


# cffi's hook subclasses whatever build_ext is registered when it runs, so the
# generated-source step still happens before this class compiles it.
setup(
    cmdclass={"build_ext": OptionalBuildExt},
    cffi_modules=["backends/c/cllm_c/_build.py:ffibuilder"],
)
