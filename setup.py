"""Build hook only: cffi compiles the C backend (cllm_c._ffi) at install time.

Everything else is in pyproject.toml; cffi's out-of-line API mode has no
pyproject-only configuration.
"""

from setuptools import setup

setup(cffi_modules=["backends/c/cllm_c/_build.py:ffibuilder"])
