"""A manifest's YAML, read with the line of every field, and its problems located by line.

The YAML is composed into nodes and walked, rather than loaded, so that lines are known,
duplicate keys are caught (plain PyYAML keeps the last silently) and a YAML bomb is refused
quickly, before anything is built from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from wml_core.errors import InvalidInput

#: Limits that keep a hostile manifest cheap to read: aliases, nesting, values after aliases
#: are expanded, and characters. Real manifests are a few dozen lines.
MAX_ALIASES = 100
MAX_DEPTH = 50
MAX_NODES = 10_000
MAX_CHARS = 1_000_000
_MERGE_TAG = "tag:yaml.org,2002:merge"
#: libyaml's parser when PyYAML has it: about 15 times faster than the pure-Python one.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)



@dataclass(frozen=True)
class Problem:
    """One thing wrong with a manifest, where it is, and what to do about it."""

    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.field}: {self.message}"


class ManifestError(InvalidInput):
    """A manifest that cannot be accepted; ``problems`` lists all that is wrong with it."""

    def __init__(self, problems: list[Problem]):
        self.problems = sorted(problems, key=lambda p: p.line)
        super().__init__("\n".join(map(str, self.problems)))


def field_name(path: tuple) -> str:
    """``("data_stores", 0, "connection")`` → ``data_stores[0].connection``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text or "manifest"



class _Fatal(Exception):
    """The YAML cannot be read at all: one problem, and nothing else can be checked."""


class YamlTree:
    """A manifest's YAML as plain values, with the line of every field and each scalar's text.

    ``data`` holds dicts, lists and scalars; ``lines[path]`` is the line of the key (or list
    item) at ``path``; ``raw[path]`` the scalar as written (so ``version: 1.10`` stays
    "1.10"). Problems found while reading (duplicate keys, bad values) go to ``problems``.
    """

    def __init__(self, text: str, filename: str):
        self.filename = filename
        self.problems: list[Problem] = []
        self.lines: dict[tuple, int] = {(): 1}
        self.raw: dict[tuple, str] = {}
        self._left = MAX_NODES
        self._open: set[yaml.Node] = set()  # collections being walked: an alias to one is a cycle
        self._constructor = yaml.SafeLoader("")
        try:
            self.data = self._load(text)
        except _Fatal as err:
            raise ManifestError([Problem(filename, *err.args)]) from None

    def _load(self, text: str) -> Any:
        if len(text) > MAX_CHARS:
            raise _Fatal(1, "manifest", f"longer than {MAX_CHARS} characters")
        try:
            _check_shape(text)
            root = yaml.compose(text, Loader=_LOADER)
        except yaml.YAMLError as err:
            raise _Fatal(*_yaml_error(err, text)) from None
        except UnicodeEncodeError as err:  # lone surrogates: text decoded from bytes that were not UTF-8
            raise _Fatal(text.count("\n", 0, err.start) + 1, "manifest", "not valid Unicode text; "
                         "save the file as UTF-8") from None
        if root is None:
            raise _Fatal(1, "manifest", "is empty: a manifest needs name, framework, ...")
        if not isinstance(root, yaml.MappingNode):
            raise _Fatal(root.start_mark.line + 1, "manifest",
                         "must be a mapping of fields (name: ..., framework: ...)")
        self.lines[()] = root.start_mark.line + 1
        return self._value(root, ())

    def _value(self, node: yaml.Node, path: tuple) -> Any:
        self._left -= 1
        if self._left < 0:
            raise _Fatal(self.lines[()], "manifest", f"expands to more than {MAX_NODES} values "
                         f"(a YAML alias bomb?)")
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node, path)
        if node in self._open:
            raise _Fatal(node.start_mark.line + 1, field_name(path), "a YAML alias refers to a "
                         "collection that contains it")
        self._open.add(node)
        try:
            return (self._mapping if isinstance(node, yaml.MappingNode) else self._list)(node, path)
        finally:
            self._open.discard(node)

    def _list(self, node: yaml.SequenceNode, path: tuple) -> list:
        items = []
        for index, item in enumerate(node.value):
            self.lines[path + (index,)] = item.start_mark.line + 1
            items.append(self._value(item, path + (index,)))
        return items

    def _mapping(self, node: yaml.MappingNode, path: tuple) -> dict:
        """A mapping's entries; ``<<`` merges applied (explicit keys win), duplicates reported."""
        merges = [value for key, value in node.value if key.tag == _MERGE_TAG]
        pairs = [(key, value) for key, value in node.value if key.tag != _MERGE_TAG]
        result = self._merged(merges, path)
        seen: dict[str, int] = {}
        for key_node, value_node in pairs:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                self._problem(line, path, "keys must be plain names, not lists or mappings")
                continue
            key = key_node.value
            if key in seen:
                self._problem(line, path + (key,), f"duplicate key (first on line {seen[key]}); "
                              f"YAML would silently keep only the last")
            seen[key] = line
            self.lines[path + (key,)] = line
            result[key] = self._value(value_node, path + (key,))
        return result

    def _merged(self, merges: list[yaml.Node], path: tuple) -> dict:
        """The entries ``<<: *a`` or ``<<: [*a, *b]`` bring in (earlier sources win)."""
        result: dict = {}
        for value in merges:
            sources = value.value if isinstance(value, yaml.SequenceNode) else [value]
            for source in reversed(sources):
                if isinstance(source, yaml.MappingNode):
                    result.update(self._value(source, path))
                else:
                    self._problem(source.start_mark.line + 1, path, "<< can merge only mappings")
        return result

    def _scalar(self, node: yaml.ScalarNode, path: tuple) -> Any:
        self.raw[path] = node.value
        try:
            return self._constructor.construct_object(node)
        except Exception:  # noqa: BLE001 - e.g. "!!int abc"; the message must not echo the value
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            self._problem(node.start_mark.line + 1, path, f"cannot read this value as {tag}")
            return None

    def _problem(self, line: int, path: tuple, message: str) -> None:
        self.problems.append(Problem(self.filename, line, field_name(path), message))


def _check_shape(text: str) -> None:
    """Refuse, before composing, YAML that would be slow or deep to walk: too many values or
    aliases, or too deep."""
    depth = aliases = 0
    for count, event in enumerate(yaml.parse(text, Loader=_LOADER)):
        line = event.start_mark.line + 1
        if count > 2 * MAX_NODES:  # each value is one event, each collection two
            raise _Fatal(line, "manifest", f"has more than {MAX_NODES} values")
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise _Fatal(line, "manifest", f"nested deeper than {MAX_DEPTH} levels")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
        elif isinstance(event, yaml.AliasEvent):
            aliases += 1
            if aliases > MAX_ALIASES:
                raise _Fatal(line, "manifest", f"uses more than {MAX_ALIASES} YAML aliases")


def _yaml_error(err: yaml.YAMLError, text: str) -> tuple[int, str, str]:
    """(line, field, message) for a YAML syntax error, without quoting the offending line."""
    if isinstance(err, yaml.reader.ReaderError):  # its position counts bytes under libyaml
        line = text.count("\n", 0, max(text.find(chr(err.character)), 0)) + 1
        return line, "yaml", f"character #x{err.character:04x} is not allowed in YAML"
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    parts = [getattr(err, "context", None), getattr(err, "problem", None)]
    message = ", ".join(p for p in parts if p) or "not valid YAML"
    return (mark.line + 1 if mark else 1), "yaml", f"invalid YAML: {message}"

