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
        # One build/ directory serves every flavour of this tree (plain,
        # sanitized, no compiler); its timestamps cannot tell them apart, so a
        # build never counts another's objects as up to date.
        self.force = True
        super().build_extensions()

    def build_extension(self, ext):
        # Remove the previous build's library first: if this compile fails,
        # the package must ship without an extension, not with a stale one
        # (a sanitized build, say, that cannot even load here).
        target = self.get_ext_fullpath(ext.name)
        if os.path.exists(target):
            os.remove(target)
        super().build_extension(ext)


# cffi's hook subclasses whatever build_ext is registered when it runs, so the
# generated-source step still happens before this class compiles it.
setup(
    cmdclass={"build_ext": OptionalBuildExt},
    cffi_modules=["backends/c/cllm_c/_build.py:ffibuilder"],
)
