from cllm_spec.errors import Unsupported


def todo(*args: object, **kwargs: object) -> None:
    raise Unsupported("not implemented yet")
