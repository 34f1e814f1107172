"""Checks on user-given values: range, finiteness, type and choice, each refused with one line naming the option.

Two faces of the same rules:
    check_int("--batch-size", 0, at_least=1)        -> VitlabError("--batch-size must be at least 1, got 0")
    p.add_argument("--batch-size", type=int_arg(at_least=1))   # argparse: "argument --batch-size: must be ..."
The argparse types run while the command line is parsed, so a bad value is refused before any model or data is
built (exit 2, one line); the check_* functions serve library entry points (TrainConfig.validate).
"""
from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from typing import Any

from .errors import VitlabError

DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")


# --- the rules: None when the value is fine, else what is wrong with it (no option name) ------------------------
def int_problem(value: Any, at_least: int | None = None, at_most: int | None = None) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return f"must be an integer, got {value!r}"
    if at_least is not None and value < at_least:
        return f"must be at least {at_least}, got {value}"
    if at_most is not None and value > at_most:
        return f"must be at most {at_most}, got {value}"
    return None


def float_problem(value: Any, at_least: float | None = None, at_most: float | None = None,
                  above: float | None = None, below: float | None = None) -> str | None:
    """A finite number within the bounds (at_least/at_most inclusive, above/below exclusive)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"must be a number, got {value!r}"
    if not math.isfinite(value):
        return f"must be a finite number, got {value}"
    if at_least is not None and value < at_least:
        return f"must be at least {at_least:g}, got {value:g}"
    if above is not None and value <= above:
        return f"must be above {above:g}, got {value:g}"
    if at_most is not None and value > at_most:
        return f"must be at most {at_most:g}, got {value:g}"
    if below is not None and value >= below:
        return f"must be below {below:g}, got {value:g}"
    return None


def choice_problem(value: Any, choices: Sequence[str]) -> str | None:
    if value not in choices:
        return f"must be one of {', '.join(choices)}, got {value!r}"
    return None


def text_problem(value: Any) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return f"must be a non-empty string, got {value!r}"
    return None


def device_problem(value: Any) -> str | None:
    """auto, or a torch device name (cpu, cuda, cuda:1, mps); whether it is present is checked when it is used."""
    if value == "auto":
        return None
    kind, _, index = str(value).partition(":")
    if not isinstance(value, str) or kind not in DEVICE_TYPES or (index and not index.isdigit()):
        return f"must be auto, cpu, cuda, cuda:N or mps, got {value!r}"
    return None


# --- library face: raise VitlabError naming the option ------------------------------------------------------------
def _raise(name: str, problem: str | None) -> None:
    if problem is not None:
        raise VitlabError(f"{name} {problem}")


def check_int(name: str, value: Any, *, at_least: int | None = None, at_most: int | None = None) -> int:
    _raise(name, int_problem(value, at_least, at_most))
    return value


def check_float(name: str, value: Any, *, at_least: float | None = None, at_most: float | None = None,
                above: float | None = None, below: float | None = None) -> float:
    _raise(name, float_problem(value, at_least, at_most, above, below))
    return float(value)


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    _raise(name, choice_problem(value, choices))
    return value


def check_text(name: str, value: Any) -> str:
    _raise(name, text_problem(value))
    return value


def check_device(name: str, value: Any) -> str:
    _raise(name, device_problem(value))
    return value


# --- argparse face: `type=` callables; argparse prefixes "argument --NAME: " --------------------------------------
def _arg_type(parse: Callable[[str], Any], problem: Callable[[Any], str | None], label: str) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {label}, got {text!r}") from None
        wrong = problem(value)
        if wrong is not None:
            raise argparse.ArgumentTypeError(wrong)
        return value

    convert.__name__ = label
    return convert


def int_arg(at_least: int | None = None, at_most: int | None = None) -> Callable[[str], int]:
    """argparse type: an integer within [at_least, at_most]."""
    return _arg_type(int, lambda v: int_problem(v, at_least, at_most), "an integer")


def float_arg(at_least: float | None = None, at_most: float | None = None, above: float | None = None,
              below: float | None = None) -> Callable[[str], float]:
    """argparse type: a finite float within the bounds (NaN and inf refused)."""
    return _arg_type(float, lambda v: float_problem(v, at_least, at_most, above, below), "a number")


def text_arg(text: str) -> str:
    """argparse type: a non-empty string (a path, a name): '' would silently mean the current directory."""
    wrong = text_problem(text)
    if wrong is not None:
        raise argparse.ArgumentTypeError(wrong)
    return text


def device_arg(text: str) -> str:
    """argparse type: auto, cpu, cuda, cuda:N or mps."""
    wrong = device_problem(text)
    if wrong is not None:
        raise argparse.ArgumentTypeError(wrong)
    return text


def int_list_arg(at_least: int | None = None) -> Callable[[str], list[int]]:
    """argparse type: comma-separated integers, each at least `at_least`; at least one."""
    def parse(text: str) -> list[int]:
        return [int(t) for t in text.split(",") if t.strip()]

    def problem(values: list[int]) -> str | None:
        if not values:
            return "must list at least one integer"
        return next((p for p in (int_problem(v, at_least) for v in values) if p), None)

    return _arg_type(parse, problem, "comma-separated integers")


def choice_list_arg(choices: Sequence[str]) -> Callable[[str], list[str]]:
    """argparse type: comma-separated names, each one of `choices`; at least one."""
    def parse(text: str) -> list[str]:
        return [t.strip() for t in text.split(",") if t.strip()]

    def problem(values: list[str]) -> str | None:
        if not values:
            return f"must list at least one of {', '.join(choices)}"
        return next((p for p in (choice_problem(v, choices) for v in values) if p), None)

    return _arg_type(parse, problem, "a comma-separated list")


def parse_model_args(items: Sequence[str]) -> dict[str, Any]:
    """--model-arg items ["key=value", ...] -> {key: value}, each value read as JSON where it parses (1e-3, true,
    [1, 2]) and as text otherwise; an item without "=" is a one-line error."""
    import json

    parsed: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise VitlabError(f"--model-arg expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            parsed[key] = json.loads(value)
        except json.JSONDecodeError:
            parsed[key] = value
    return parsed
