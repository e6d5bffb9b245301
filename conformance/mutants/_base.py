"""The reference backend's names, re-exported for mutants to override one of."""

from cllm_numpy import *  # noqa: F403
from cllm_numpy import build_info, dtypes, version  # noqa: F401
