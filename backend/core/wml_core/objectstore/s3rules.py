"""What every S3 client of ours shares, without importing boto3: part sizes, error messages, part bodies.

``S3Store`` (boto3) and ``LightS3Store`` (its own requests) both take these, so a file gets the
same multipart ETag and a refusal the same words whichever client sent it.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, wait
from pathlib import Path

from wml_core.objectstore.digests import multipart_etag, span_md5

#: S3's limits on a multipart upload: at most 10,000 parts of at least 5 MiB (but the last).
MAX_PARTS = 10_000
MIN_PART = 5 * 1024 * 1024
#: Files from this size on go in parts of ``PART_SIZE`` (as the AWS CLI does).
MULTIPART_THRESHOLD = 8 * 1024 * 1024
PART_SIZE = 8 * 1024 * 1024

_MISSING = {"NoSuchBucket"}
_NO_OBJECT = {"NoSuchKey", "404", "NotFound"}
_BAD_CREDENTIALS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
                    "ExpiredToken", "InvalidClientTokenId", "AuthorizationHeaderMalformed"}
_DENIED = {"AccessDenied", "403", "Forbidden", "AllAccessDisabled"}


def part_size_for(size: int, threshold: int = MULTIPART_THRESHOLD, chunk: int = PART_SIZE) -> int:
    """The part size a file of ``size`` bytes is uploaded with; 0 means a single PUT."""
    if size < threshold:
        return 0
    needed = math.ceil(size / MAX_PARTS / (1 << 20)) << 20
    return max(chunk, needed, MIN_PART)


#: One part of a file: its number (from 1), offset and length.
Span = tuple[int, int, int]


def send_parts(pool: Executor, path: Path, part: int, done: dict[int, tuple[int, str]],
               put: Callable[[Span, hashlib._Hash], str],
               progress: Callable[[int], None] | None) -> tuple[list[tuple[int, str]], str]:
    """Send ``path`` in parts of ``part`` bytes on ``pool``, each with ``put(span, md5)`` (which
    returns the part's ETag) unless the open upload already holds it byte for byte (``done``: part
    number to size and ETag); the (number, ETag) of every part, and the object's ETag. On an error
    or an interrupt the parts not started are dropped and the upload left open, to be resumed."""
    size = path.stat().st_size
    spans = [(n + 1, offset, min(part, size - offset)) for n, offset in enumerate(range(0, size, part))]
    futures = [pool.submit(_send_part, path, span, done.get(span[0]), put) for span in spans]
    try:
        results = []
        for future, (_, _, length) in zip(futures, spans):
            results.append(future.result())
            if progress:
                progress(length)
    except BaseException:
        for future in futures:
            future.cancel()
        wait(futures)
        raise
    return ([(n, etag) for (n, _, _), (_, etag) in zip(spans, results)],
            multipart_etag([digest for digest, _ in results]))


def _send_part(path: Path, span: Span, existing: tuple[int, str] | None, put) -> tuple[bytes, str]:
    """One part's MD5 and ETag: sent with ``put``, unless ``existing`` holds these exact bytes. The
    part is read twice (its MD5 goes first, in a header) but never held."""
    _, offset, length = span
    digest = span_md5(path, offset, length)
    if existing == (length, digest.hexdigest()):
        return digest.digest(), f'"{existing[1]}"'
    return digest.digest(), put(span, digest)


def refusal(code: str, detail: str, bucket: str, endpoint: str, key: str | None) -> str:
    """The message for an error answer ``code`` of the S3 service at ``endpoint``."""
    where = f"bucket {bucket!r} at {endpoint}"
    if code in _MISSING:
        return missing_message(bucket, endpoint)
    if key is not None and code in _NO_OBJECT:
        return f"no object {key!r} in {where}"
    if code in _BAD_CREDENTIALS:
        return f"S3 credentials rejected ({code}) for {where}"
    if code in _DENIED:
        return f"access denied to {where} for these credentials"
    return f"S3 error {code} for {where}: {detail}".rstrip(": ")


def missing_message(bucket: str, endpoint: str) -> str:
    """What a missing bucket is said to be."""
    return f"bucket {bucket!r} does not exist at {endpoint}"


def scrub(message: str, secrets: Iterable[str | None]) -> str:
    """``message`` on one line with no key in it, even one a server echoed back (nor the
    environment's)."""
    every = {*secrets, os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")}
    for secret in filter(None, every):
        message = message.replace(secret, "***")
    return " ".join(message.split())


class FileSpan:
    """``length`` bytes of a file from ``offset``, read like a file of their own: a part is sent
    from disk, not held in memory, and can be re-read (signing, retries seek back to 0)."""

    def __init__(self, path: Path, offset: int, length: int):
        self._file, self._offset, self._length, self._pos = open(path, "rb"), offset, length, 0
        self._file.seek(offset)

    def read(self, size: int | None = -1) -> bytes:
        left = self._length - self._pos
        data = self._file.read(left if size is None or size < 0 else min(size, left))
        self._pos += len(data)
        return data

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._length}[whence]
        self._pos = max(0, min(self._length, base + pos))
        self._file.seek(self._offset + self._pos)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def __len__(self) -> int:
        return self._length

    def close(self) -> None:
        self._file.close()
