"""Settings dataclasses as flags: one declaration gives the flag, its help, its default and its range check."""
import argparse
from dataclasses import dataclass
from typing import Optional, Union

import pytest

from arbitor.train.config import TrainConfig
from arbitor.train.settings import add_arguments, check_settings, from_args, setting


@dataclass
class _Demo:
    steps: int = setting(10, "steps", positive=True)
    ratio: float = setting(0.5, "a ratio", low=0.0, high=1.0)
    mode: str = setting("a", "a mode", choices=("a", "b"))
    path: Optional[str] = setting(None, "a file")
    fast: bool = setting(False, "go fast")
    hidden: int = setting(3, "not a flag", flag=False)

    def __post_init__(self):
        check_settings(self)


def _parser():
    p = argparse.ArgumentParser()
    add_arguments(p, _Demo, {"ratio": 0.25})
    return p


def test_flags_defaults_and_round_trip():
    args = _parser().parse_args(["--steps", "7", "--mode", "b", "--path", "x.txt", "--fast"])
    assert from_args(_Demo, args) == _Demo(steps=7, ratio=0.25, mode="b", path="x.txt", fast=True)
    assert not hasattr(args, "hidden")
    assert "(default 10)" in _parser().format_help() and "in [0, 1]" in _parser().format_help()


@pytest.mark.parametrize("argv", [["--steps", "0"], ["--steps", "2.5"], ["--ratio", "1.5"], ["--ratio", "nan"],
                                  ["--mode", "c"]])
def test_out_of_range_flags_are_refused_at_parse_time(argv):
    with pytest.raises(SystemExit):
        _parser().parse_args(argv)


def test_out_of_range_values_are_refused_in_the_dataclass():
    with pytest.raises(ValueError, match=r"--ratio must be in \[0, 1\], got 2"):
        _Demo(ratio=2)
    with pytest.raises(ValueError, match="--steps must be an integer"):
        _Demo(steps=2.0)
    with pytest.raises(ValueError, match="--seed must be in"):
        TrainConfig(seed=-1)
    with pytest.raises(ValueError, match="--warmup-steps must be >= 0"):
        TrainConfig(warmup_steps=-2)
    assert TrainConfig(eval_interval=30).checkpoint_interval == 30
    assert TrainConfig(eval_interval=30, save_interval=0).checkpoint_interval == 0


@dataclass
class _Words:
    rate: Optional[Union[float, str]] = setting("auto", "a rate", low=0.0, high=2.0, words=("auto",))

    def __post_init__(self):
        check_settings(self)


def test_a_number_or_a_word():
    p = argparse.ArgumentParser()
    add_arguments(p, _Words)
    assert "in [0, 2] or auto (default auto)" in " ".join(p.format_help().split())
    assert from_args(_Words, p.parse_args([])) == _Words(rate="auto")
    assert from_args(_Words, p.parse_args(["--rate", "auto"])).rate == "auto"
    assert from_args(_Words, p.parse_args(["--rate", "1.5"])).rate == 1.5
    for bad in ("fast", "2.5", "nan"):
        with pytest.raises(SystemExit):
            p.parse_args(["--rate", bad])
    with pytest.raises(ValueError, match=r"--rate must be in \[0, 2\] or auto, got 'fast'"):
        _Words(rate="fast")
    with pytest.raises(ValueError, match=r"--rate must be in \[0, 2\] or auto, got 3"):
        _Words(rate=3)
    assert _Words(rate=None).rate is None
