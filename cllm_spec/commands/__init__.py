"""The ``cllm`` subcommands, one module each, each with ``register(subparsers)``.

A module's ``register`` adds its subparser and sets ``func`` to a function that
takes the parsed arguments and returns the exit status.
"""

COMMAND_MODULES = ("train", "generate", "evaluate", "info", "plot", "conformance")
