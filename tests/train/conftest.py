import os
from pathlib import Path
from typing import Callable, Union

import pytest

from arbitor.cli import main as cli_main


def _run_cli(args: list[str], cwd: Union[str, Path]) -> int:
    old = os.getcwd()
    os.chdir(cwd)
    try:
        return cli_main(args)
    finally:
        os.chdir(old)


@pytest.fixture(scope="session")
def run_cli() -> Callable[[list[str], Union[str, Path]], int]:
    """``run_cli(args, cwd)``: ``arbitor <args>`` in this process with ``cwd`` as the working directory (the old
    one is restored); returns the exit code."""
    return _run_cli
