"""Typed, located reading of a manifest's fields: a bad value becomes a Problem at its line.

``Reader`` gets each field of a ``YamlTree`` as the type it must have (a whole number, one of
some choices, a memory size, a credential with ``${ENV_VAR}`` references resolved...). A wrong
field is recorded as a Problem and read as the getter's default, so that every problem of a
manifest is found in one pass. Messages never echo a credential's value.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Any

from wml_core.manifest.located_yaml import Problem, YamlTree, field_name

#: Above any real machine's memory: a typo (or a hostile manifest) is an error, not a number.
MAX_MEMORY_BYTES = 2**60
#: Memory units (case-insensitive): FfDL's Mb/MB/MiB/Gb/GB/GiB and Kubernetes' Mi/Gi/M/G.
MEMORY_UNITS = {"k": 10**3, "kb": 10**3, "ki": 2**10, "kib": 2**10,
                "m": 10**6, "mb": 10**6, "mi": 2**20, "mib": 2**20,
                "g": 10**9, "gb": 10**9, "gi": 2**30, "gib": 2**30,
                "t": 10**12, "tb": 10**12, "ti": 2**40, "tib": 2**40}
_MEMORY = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*\Z")
#: Duration units: seconds, minutes, hours, days.
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
#: The longest duration accepted (a year): anything longer is a typo.
MAX_DURATION_S = 365 * 86400
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([smhd])")
_DURATION = re.compile(r"(?:(?:\d+(?:\.\d*)?|\.\d+)[smhd])+\Z")
_NAME = re.compile(r"[A-Za-z0-9 ._-]+\Z")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def parse_memory(value: Any) -> int:
    """Bytes in a memory size: ``4Gb``/``4GB`` = 4e9, ``4GiB``/``4Gi`` = 4·2³⁰, ``512Mi``;
    a bare number is MB. ValueError says what is wrong."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError("must be a size such as 512Mi, 4Gi, 4GB or 4096 (MB)")
    text = str(value)
    match = _MEMORY.match(text)
    if text.strip().startswith("-"):
        raise ValueError(f"must be positive (got {text!r})")
    unit = match and MEMORY_UNITS.get(match.group(2).lower() or "mb")
    if not unit:
        raise ValueError(f"{text!r} is not a memory size: write a number and a unit such as "
                         f"512Mi, 4Gi, 4Gb or 4GB (a bare number is MB)")
    size = float(match.group(1)) * unit
    if not size < MAX_MEMORY_BYTES:
        raise ValueError(f"{_shown(text)} is more memory than any machine has")
    if int(size) <= 0:
        raise ValueError(f"must be positive (got {text!r})")
    return int(size)


def parse_duration(value: Any) -> float:
    """Seconds in a duration: ``90s``, ``30m``, ``2h``, ``1h30m``, ``1.5d``; a bare number is
    seconds. ValueError says what is wrong."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError("must be a duration such as 90m, 2h or 1h30m")
    text = str(value).strip().lower()
    try:
        seconds = float(text)
    except ValueError:
        if not _DURATION.match(text):
            raise ValueError(f"{_shown(value)} is not a duration: write 90m, 2h or 1h30m "
                             "(units s, m, h, d; a bare number is seconds)") from None
        seconds = sum(float(n) * DURATION_UNITS[u] for n, u in _DURATION_PART.findall(text))
    if not 0 < seconds <= MAX_DURATION_S:
        raise ValueError(f"must be above 0 and at most 365d (got {_shown(value)})")
    return seconds


def _shown(value: Any) -> str:
    """A wrong (non-secret) value as a message shows it: short, and collections by kind."""
    if isinstance(value, (dict, list)):
        return "a mapping" if isinstance(value, dict) else "a list"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class Reader:
    """Typed getters over a YamlTree: a bad field becomes a Problem and the getter's default."""

    def __init__(self, tree: YamlTree, env: Mapping[str, str]):
        self.tree, self.env = tree, env

    def line(self, path: tuple) -> int:
        """The line of the field at ``path`` (absent: of the nearest mapping that holds it)."""
        while path not in self.tree.lines:
            path = path[:-1]
        return self.tree.lines[path]

    def problem(self, path: tuple, message: str) -> None:
        """Record that the field at ``path`` is wrong, at its line."""
        self.tree.problems.append(Problem(self.tree.filename, self.line(path), field_name(path),
                                          message))

    def get(self, path: tuple) -> Any:
        """The value at ``path``, or None (absent, null, or under something not a mapping)."""
        value = self.tree.data
        for key in path:
            if isinstance(value, dict):
                value = value.get(key)
            elif isinstance(value, list) and isinstance(key, int) and key < len(value):
                value = value[key]
            else:
                return None
        return value

    def section(self, path: tuple, fields: tuple, required: bool = False) -> dict | None:
        """A mapping whose keys must be among ``fields`` (a typo names the closest one)."""
        value = self.get(path)
        if value is None:
            if required:
                self.problem(path, "is required")
            return None
        if not isinstance(value, dict):
            self.problem(path, f"must be a mapping with fields such as {', '.join(fields[:4])}")
            return None
        for key in value:
            if key not in fields:
                close = difflib.get_close_matches(key, fields, n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(fields)}"
                self.problem(path + (key,), f"unknown field; {hint}")
        return value

    def text(self, path: tuple, required: bool = False) -> str | None:
        """A scalar as written (``version: 1.10`` is "1.10"); never echoed in messages."""
        value = self.get(path)
        if value is None or value == "":
            if required:
                self.problem(path, "is required" if value is None else "must not be empty")
            return None
        if isinstance(value, (dict, list)):
            self.problem(path, "must be a single value, not a list or mapping")
            return None
        return value if isinstance(value, str) else self.tree.raw.get(path, str(value))

    def secret(self, path: tuple) -> str | None:
        """A credential or endpoint: text with ``${ENV_VAR}`` references resolved from env."""
        value = self.text(path)
        if value is None:
            return None
        for name in _ENV_REF.findall(value):
            if name not in self.env:
                self.problem(path, f"environment variable {name} is not set")
        return _ENV_REF.sub(lambda m: self.env.get(m.group(1), ""), value)

    def choice(self, path: tuple, options: tuple, default: str | None) -> str | None:
        """One of ``options`` (case-insensitive, returned lowercased)."""
        value = self.text(path)
        if value is None:
            return default
        if value.lower() not in options:
            self.problem(path, f"must be one of {', '.join(options)} (got {value!r})")
            return default
        return value.lower()

    def whole(self, path: tuple, default: int | None, low: int,
              high: int | None = None) -> int | None:
        """A whole number in [low, high]; 2.0 counts as 2, but 1.5, "two" and true do not."""
        value = self.get(path)
        if value is None:
            return default
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(path, f"must be a whole number (got {_shown(value)})")
        elif value < low or (high is not None and value > high):
            bounds = f"between {low} and {high}" if high is not None else f"{low} or more"
            self.problem(path, f"must be {bounds} (got {_shown(value)})")
        else:
            return value
        return default

    def positive(self, path: tuple, default: float, high: float) -> float:
        """A number above 0 and at most ``high`` (FfDL's cpus: 0.5 is fine)."""
        value = self.get(path)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.problem(path, f"must be a number (got {_shown(value)})")
        elif not 0 < value <= high:
            self.problem(path, f"must be a positive number up to {high:g} (got {_shown(value)})")
        else:
            return value
        return default

    def memory(self, path: tuple) -> int | None:
        """A memory size in bytes (see parse_memory)."""
        value = self.get(path)
        if value is None:
            return None
        try:
            return parse_memory(value)
        except ValueError as err:
            self.problem(path, str(err))
            return None

    def duration(self, path: tuple) -> float | None:
        """A duration in seconds (see parse_duration)."""
        value = self.get(path)
        if value is None:
            return None
        try:
            return parse_duration(value)
        except ValueError as err:
            self.problem(path, str(err))
            return None

    def name(self, path: tuple) -> str | None:
        """The definition's name: required, at most 100 of [A-Za-z0-9 ._-]."""
        value = self.text(path, required=True)
        if value is not None and not _NAME.match(value):
            self.problem(path, f"may use only letters, digits, spaces and . _ - (got {value!r})")
        elif value is not None and len(value) > 100:
            self.problem(path, f"is {len(value)} characters long; the limit is 100")
        return value
