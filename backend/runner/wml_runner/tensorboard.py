"""Read scalar summaries from TensorBoard event files (FfDL's ``evaluation_metrics``).

Event files are TFRecord streams of ``Event`` protocol buffers. Only the few fields that carry
scalars are decoded here, so runs need neither TensorFlow nor TensorBoard installed:
``Event{wall_time=1, step=2, summary=5}``, ``Summary{value=1}``,
``Summary.Value{tag=1, simple_value=2, tensor=8}``, ``TensorProto{tensor_content=4, float_val=5, double_val=6}``.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Iterator, Optional

from wml_runner.isolation import read_run_file

_HEADER = struct.Struct("<QI")  # record length, masked CRC of the length


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def fields(buf: bytes) -> Iterator[tuple[int, int, object]]:
    """(field number, wire type, value) of each field of a protobuf message."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + size], pos + size
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            return  # groups are not used by event files
        yield number, wire, value


def _tensor_scalar(buf: bytes) -> Optional[float]:
    for number, _, value in fields(buf):
        if number == 5:  # float_val, packed or not
            return struct.unpack("<f", value[:4])[0]
        if number == 6:  # double_val
            return struct.unpack("<d", value[:8])[0]
        if number == 4 and len(value) in (4, 8):  # tensor_content of one float or double
            return struct.unpack("<f" if len(value) == 4 else "<d", value)[0]
    return None


def _scalars(summary: bytes) -> dict[str, float]:
    out = {}
    for number, _, value in fields(summary):
        if number != 1:
            continue
        tag, scalar = None, None
        for n, _wire, v in fields(value):
            if n == 1:
                tag = v.decode("utf-8", "replace")
            elif n == 2:
                scalar = struct.unpack("<f", v)[0]
            elif n == 8:
                scalar = _tensor_scalar(v)
        if tag is not None and scalar is not None:
            out[tag] = scalar
    return out


def events(data: bytes) -> Iterator[tuple[float, int, dict[str, float]]]:
    """(wall time, step, {tag: value}) of each event with scalars in a TFRecord stream."""
    pos = 0
    while pos + _HEADER.size <= len(data):
        length, _ = _HEADER.unpack_from(data, pos)
        start, end = pos + _HEADER.size, pos + _HEADER.size + length
        if end + 4 > len(data):
            return  # a record still being written
        wall_time, step, scalars = 0.0, 0, {}
        for number, _, value in fields(data[start:end]):
            if number == 1:
                wall_time = struct.unpack("<d", value)[0]
            elif number == 2:
                step = value
            elif number == 5:
                scalars = _scalars(value)
        if scalars:
            yield wall_time, step, scalars
        pos = end + 4


class EventFileTail:
    """Reads new scalars from every event file under a folder, remembering where it stopped
    (``root``: the run's folder when the command runs as another user: only files under it are
    read, following no link; see ``open_run_file``)."""

    def __init__(self, folder: Path, root: Optional[Path] = None):
        self.folder, self.root = folder, root
        self._done: dict[Path, int] = {}

    def new_scalars(self) -> list[tuple[float, int, dict[str, float]]]:
        """Scalars written since the last call, from complete records only."""
        out = []
        for path in sorted(self.folder.rglob("*tfevents*")) if self._readable() else []:
            start = self._done.get(path, 0)
            try:
                data = read_run_file(path, self.root, start)  # what is new only: event files grow long
            except (OSError, ValueError):  # gone, a link, not a file
                continue
            consumed = 0
            for record in _records_from(data, 0):
                consumed = record[0]
                out.extend(events(record[1]))
            self._done[path] = start + consumed
        return out


    def _readable(self) -> bool:
        """Whether the folder is there, and under ``root`` if there is one."""
        inside = self.root is None or self.folder.is_relative_to(self.root)
        return inside and self.folder.is_dir()


def _records_from(data: bytes, pos: int) -> Iterator[tuple[int, bytes]]:
    """(end offset, whole record bytes) of each complete record from ``pos``."""
    while pos + _HEADER.size <= len(data):
        length, _ = _HEADER.unpack_from(data, pos)
        end = pos + _HEADER.size + length + 4
        if end > len(data):
            return
        yield end, data[pos:end]
        pos = end
