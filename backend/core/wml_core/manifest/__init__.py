"""Read FfDL (ManifestV1) and Watson ML manifests into a ``Definition`` (definition.py).

The public entry point. Every problem of a manifest is reported at once, each as
``file:line: field: problem`` with the line of the field it is about (a missing field: the
line of the mapping that should hold it). Credentials may be ``${ENV_VAR}`` references,
resolved at load time; no message ever contains a credential's value.

The work is shared out: manifest_yaml.py reads the YAML with the line of every field (and
refuses duplicate keys and YAML bombs), manifest_reader.py reads each field as its type,
manifest_formats.py maps each format's layout, manifest_extensions.py the sections both share.
"""

from __future__ import annotations

__all__ = ["ManifestError", "Problem", "load_manifest", "load_manifest_file", "manifest_format",
           "parse_duration", "parse_memory", "read_manifest_text"]

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from wml_core.definition import Definition
from wml_core.manifest.extensions import read_extensions
from wml_core.manifest.formats import read_ffdl, read_wml
from wml_core.manifest.reader import Reader, parse_duration, parse_memory
from wml_core.manifest.located_yaml import ManifestError, Problem, YamlTree


def load_manifest(text: str, filename: str = "manifest.yml",
                  env: Mapping[str, str] | None = None) -> Definition:
    """Read a manifest of either format; ManifestError lists every problem at once."""
    tree = YamlTree(text, filename)
    reader = Reader(tree, os.environ if env is None else env)
    fmt = _format(tree.data)
    fields = (read_wml if fmt == "wml" else read_ffdl)(reader)
    fields.update(read_extensions(reader))
    if not tree.problems:
        try:
            return Definition(format=fmt, **fields)
        except ValidationError as err:  # a safety net: the readers check all of this first
            for error in err.errors():
                reader.problem((), f"{'.'.join(map(str, error['loc']))}: {error['msg']}")
    raise ManifestError(tree.problems)


def load_manifest_file(path: str | os.PathLike,
                       env: Mapping[str, str] | None = None) -> Definition:
    """Read a manifest file (UTF-8); an unreadable file is a ManifestError too."""
    return load_manifest(read_manifest_text(path), str(path), env)


def read_manifest_text(path: str | os.PathLike) -> str:
    """A manifest file's text (UTF-8, with or without a BOM); a file that cannot be read, or is
    not UTF-8, is a ManifestError naming it."""
    name = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise ManifestError([Problem(name, 1, "manifest", f"cannot read: {err.strerror}")]) \
            from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ManifestError([Problem(name, line, "manifest", f"not UTF-8 text (byte "
                                     f"0x{data[err.start]:02x}); save the file as UTF-8")]) \
            from None


def manifest_format(text: str) -> str:
    """``"wml"`` for a Watson ML manifest (top-level model_definition), else ``"ffdl"``."""
    try:
        return _format(YamlTree(text, "manifest").data)
    except ManifestError:
        return "ffdl"


def _format(data: Any) -> str:
    """The format of a manifest's top-level data: ``"wml"`` or ``"ffdl"``."""
    return "wml" if isinstance(data, dict) and "model_definition" in data else "ffdl"
