"""CLLM: a test-first reference specification of the components of a small
transformer language model, with pluggable backends.

Nothing heavy happens at import; backends are loaded by :func:`get_backend`.
"""

from cllm_spec.registry import available_backends, get_backend

__version__ = "0.1.0"
SPEC_VERSION = "1"

__all__ = ["SPEC_VERSION", "__version__", "available_backends", "get_backend"]
