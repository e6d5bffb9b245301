"""Not written yet."""

import argparse


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Adds nothing until the command exists."""
