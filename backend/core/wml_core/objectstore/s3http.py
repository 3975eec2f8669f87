"""S3 without boto3 for what an upload does: list, put (single or multipart), bucket checks.

Importing boto3 and building a client costs more than listing a few thousand objects, and
botocore's per-request work costs more than a small PUT: a command that uploads once and exits
(``wml upload``) spent most of its time there. ``LightS3Store`` signs its own requests
(Signature V4 from the standard library; bodies vouched for by ``Content-MD5``) and sends them
over keep-alive connections, one per thread. Multipart uploads resume as ``S3Store``'s do (the
newest open upload of the key, its parts reused where their MD5 matches). Everything else
(downloads, deletes, bucket checks' wording) goes to the full ``S3Store``, built on first need.

It serves only the case it can resolve as boto3 would, word for word: an explicit endpoint
(the configuration's, ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``) and static keys (the
configuration's or ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, no ``AWS_PROFILE``), and no proxy
(``BOTO_ONLY``). HTTPS verifies certificates with ``AWS_CA_BUNDLE`` where set, as boto3 does.
``light_store`` returns None otherwise, and the caller uses ``S3Store``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import os
import random
import threading
import time
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from xml.etree import ElementTree

from wml_core.errors import StorageError
from wml_core.objectstore.base import ObjectInfo, ObjectStore, Progress, StoreConfig
from wml_core.objectstore.s3rules import FileSpan, Span, missing_message, part_size_for, refusal, scrub, send_parts

#: Attempts per request (as ``S3Store``'s botocore "standard" retries), with jittered backoff.
ATTEMPTS = 5
#: Seconds a connection or an answer may take.
TIMEOUT_S = 60
#: Answers worth another attempt: throttling and server trouble.
_RETRY_STATUS = {429, 500, 502, 503, 504}
_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
_UNSIGNED = "UNSIGNED-PAYLOAD"
#: Settings only boto3 honours (proxies, ignored endpoints): where one is set, it serves.
BOTO_ONLY = ("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy",
             "ALL_PROXY", "all_proxy")
#: Bytes read from a file per socket write when a part is streamed.
_BLOCK = 1 << 20
#: Parts of multipart uploads sent at once (as ``S3Store``'s transfer settings).
PART_WORKERS = 10


def light_store(config: StoreConfig, full: ObjectStore | None = None) -> "LightS3Store | None":
    """A ``LightS3Store`` for ``config`` when its endpoint and static keys are known, else None;
    ``full``: the ``S3Store`` it hands the rest to (default: one of ``config``, built on first need)."""
    env = os.environ
    endpoint = config.endpoint or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if config.kind != "s3" or config.anonymous or not endpoint or any(env.get(name) for name in BOTO_ONLY):
        return None
    if config.access_key and config.secret_key:
        key, secret, token = config.access_key, config.secret_key, None
    elif env.get("AWS_PROFILE") or env.get("AWS_DEFAULT_PROFILE"):
        return None  # boto3 would take the profile's keys, not the environment's
    else:
        key, secret, token = (env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY"),
                              env.get("AWS_SESSION_TOKEN"))
    if not (key and secret):
        return None
    region = config.region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
    parsed = urllib.parse.urlsplit(endpoint)
    if parsed.scheme not in ("http", "https") or not parsed.hostname or parsed.path.strip("/"):
        return None
    return LightS3Store(config, _Signer(key, secret, token, region), parsed, full)


class _Signer:
    """AWS Signature Version 4 for S3 requests whose body is vouched for by ``Content-MD5``."""

    def __init__(self, key: str, secret: str, token: str | None, region: str):
        self.key, self.secret, self.token, self.region = key, secret, token, region
        self._day_key: tuple[str, bytes] = ("", b"")

    def _signing_key(self, day: str) -> bytes:
        if self._day_key[0] != day:
            k = hmac.new(f"AWS4{self.secret}".encode(), day.encode(), hashlib.sha256).digest()
            for part in (self.region, "s3", "aws4_request"):
                k = hmac.new(k, part.encode(), hashlib.sha256).digest()
            self._day_key = (day, k)
        return self._day_key[1]

    def sign(self, method: str, host: str, path: str, query: dict[str, str], headers: dict[str, str]) -> None:
        """Add the date, payload and ``Authorization`` headers to ``headers`` (lower-case names)."""
        now = datetime.now(timezone.utc)
        stamp, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        headers.update({"host": host, "x-amz-date": stamp, "x-amz-content-sha256": _UNSIGNED})
        if self.token:
            headers["x-amz-security-token"] = self.token
        names = sorted(headers)
        canonical = "\n".join([
            method, path, _query_string(query),
            "".join(f"{n}:{' '.join(str(headers[n]).split())}\n" for n in names),
            ";".join(names), _UNSIGNED])
        scope = f"{day}/{self.region}/s3/aws4_request"
        to_sign = f"AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signature = hmac.new(self._signing_key(day), to_sign.encode(), hashlib.sha256).hexdigest()
        headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={self.key}/{scope}, "
                                    f"SignedHeaders={';'.join(names)}, Signature={signature}")


def _quote(text: str, safe: str = "-_.~") -> str:
    return urllib.parse.quote(text, safe=safe)


def _query_string(query: dict[str, str]) -> str:
    return "&".join(f"{_quote(k)}={_quote(v)}" for k, v in sorted(query.items()))


class _Answer:
    """An S3 answer: status, headers, body, and the error code of an error body."""

    def __init__(self, status: int, headers: http.client.HTTPMessage, body: bytes):
        self.status, self.headers, self.body = status, headers, body

    @property
    def code(self) -> str:
        """The ``<Code>`` of an error body, else the status."""
        try:
            return ElementTree.fromstring(self.body).findtext("Code") or str(self.status)
        except ElementTree.ParseError:
            return str(self.status)

    @property
    def detail(self) -> str:
        try:
            return ElementTree.fromstring(self.body).findtext("Message") or ""
        except ElementTree.ParseError:
            return ""


class LightS3Store(ObjectStore):
    """An S3 store that lists and puts small objects itself and hands the rest to ``S3Store``."""

    ranged_listing = True

    def __init__(self, config: StoreConfig, signer: _Signer, endpoint: urllib.parse.SplitResult,
                 full: ObjectStore | None = None):
        self.config, self._signer = config, signer
        self._https = endpoint.scheme == "https"
        self._host = endpoint.netloc
        self.endpoint = f"{endpoint.scheme}://{endpoint.netloc}"
        self._local = threading.local()
        self._lock = threading.Lock()
        self._full = full
        self._pool: ThreadPoolExecutor | None = None

    # -- plumbing ---------------------------------------------------------------------------

    def full(self) -> ObjectStore:
        """The boto3 ``S3Store`` of the same configuration, for what this class does not do itself."""
        with self._lock:
            if self._full is None:
                from wml_core.objectstore.s3 import S3Store
                self._full = S3Store(self.config)
            return self._full

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self._https:
                import ssl
                context = ssl.create_default_context(cafile=os.environ.get("AWS_CA_BUNDLE") or None)
                conn = http.client.HTTPSConnection(self._host, timeout=TIMEOUT_S, blocksize=_BLOCK, context=context)
            else:
                conn = http.client.HTTPConnection(self._host, timeout=TIMEOUT_S, blocksize=_BLOCK)
            self._local.conn = conn
        return conn

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _request(self, method: str, bucket: str, key: str = "", query: dict[str, str] | None = None,
                 body: bytes | tuple[Path, int, int] = b"", headers: dict[str, str] | None = None) -> _Answer:
        """One signed request, retried on dropped connections, throttling and 5xx answers. A body
        given as (path, offset, length) is streamed from the file, read afresh by each attempt."""
        path = "/" + _quote(bucket) + ("/" + _quote(key, safe="/-_.~") if key else "")
        query = query or {}
        target = path + (f"?{_query_string(query)}" if query else "")
        size = len(body) if isinstance(body, bytes) else body[2]
        for attempt in range(ATTEMPTS):
            sent = {"content-length": str(size), **(headers or {})}
            self._signer.sign(method, self._host, path, query, sent)
            data = body if isinstance(body, bytes) else FileSpan(*body)
            try:
                conn = self._connection()
                conn.request(method, target, body=data, headers=sent)
                reply = conn.getresponse()
                answer = _Answer(reply.status, reply.headers, reply.read())
            except (OSError, http.client.HTTPException) as exc:
                self._drop_connection()
                if attempt + 1 == ATTEMPTS:
                    raise StorageError(f"cannot reach S3 endpoint {self.endpoint} for bucket {bucket!r}: "
                                       f"{_reason(exc)}") from None
                _backoff(attempt)
                continue
            finally:
                if not isinstance(data, bytes):
                    data.close()
            if answer.status not in _RETRY_STATUS or attempt + 1 == ATTEMPTS:
                return answer
            _backoff(attempt)
        raise AssertionError("unreachable")

    def _failed(self, answer: _Answer, bucket: str, key: str | None = None) -> StorageError:
        message = refusal(answer.code, answer.detail, bucket, self.endpoint, key)
        return StorageError(scrub(message, (self._signer.key, self._signer.secret)))

    # -- buckets ----------------------------------------------------------------------------

    def bucket_exists(self, bucket: str) -> bool:
        """Whether ``bucket`` exists and these credentials may use it (False on 404 and 403)."""
        answer = self._request("HEAD", bucket)
        if answer.status in (404, 403):
            return False
        if answer.status >= 300:
            raise self._failed(answer, bucket)
        return True

    def create_bucket(self, bucket: str) -> None:
        """Create ``bucket`` (in the signing region); one that is already ours is fine."""
        region = self._signer.region
        body = b"" if region in ("us-east-1", "aws-global") else (
            '<CreateBucketConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            f"<LocationConstraint>{region}</LocationConstraint></CreateBucketConfiguration>").encode()
        answer = self._request("PUT", bucket, body=body)
        if answer.status >= 300 and answer.code != "BucketAlreadyOwnedByYou":
            raise self._failed(answer, bucket)

    def check_bucket(self, bucket: str) -> None:
        self.full().check_bucket(bucket)

    def missing(self, bucket: str) -> StorageError:
        return StorageError(missing_message(bucket, self.endpoint))

    # -- objects ----------------------------------------------------------------------------

    def list(self, bucket: str, prefix: str = "") -> Iterator[ObjectInfo]:
        return self.list_range(bucket, prefix)

    def list_range(self, bucket: str, prefix: str = "", after: str | None = None,
                   until: str | None = None, page_size: int = 1000) -> Iterator[ObjectInfo]:
        """Objects under ``prefix`` with ``after < key <= until``, in key order, one LIST from ``after``."""
        query = {"list-type": "2", "prefix": prefix, "max-keys": str(page_size), "encoding-type": "url"}
        if after:
            query["start-after"] = after
        while True:
            answer = self._request("GET", bucket, query=query)
            if answer.status >= 300:
                raise self._failed(answer, bucket)
            page = ElementTree.fromstring(answer.body)
            for item in page.iterfind(f"{_NS}Contents"):
                key = urllib.parse.unquote_plus(item.findtext(f"{_NS}Key"))
                if until is not None and key > until:
                    return
                yield ObjectInfo(key, int(item.findtext(f"{_NS}Size")), item.findtext(f"{_NS}ETag").strip('"'))
            token = page.findtext(f"{_NS}NextContinuationToken")
            if page.findtext(f"{_NS}IsTruncated") != "true" or not token:
                return
            query = {**{k: v for k, v in query.items() if k != "start-after"}, "continuation-token": token}

    def part_size(self, size: int) -> int:
        """The full store's part size (by default the same rule and settings, known without building it)."""
        return self._full.part_size(size) if self._full is not None else part_size_for(size)

    def put_file(self, bucket: str, key: str, path: Path, progress: Progress = None) -> None:
        self.put_file_etag(bucket, key, path, progress)

    def put_file_etag(self, bucket: str, key: str, path: Path, progress: Progress = None) -> str:
        """One PUT with ``Content-MD5``, or a multipart upload from the multipart threshold on (one
        interrupted before resumes, as ``S3Store``'s do); the ETag, computed as the bytes go."""
        path = Path(path)
        part = self.part_size(path.stat().st_size)
        if part:
            return self._put_multipart(bucket, key, path, part, progress)
        data = path.read_bytes()
        digest = hashlib.md5(data, usedforsecurity=False)
        self._checked(self._request("PUT", bucket, key, body=data, headers=_md5_header(digest)), bucket, key)
        if progress:
            progress(len(data))
        return digest.hexdigest()

    def _checked(self, answer: _Answer, bucket: str, key: str | None = None) -> _Answer:
        """``answer``, unless it is an error (S3 may answer 200 with an error body to a completion)."""
        if answer.status >= 300 or answer.body.startswith(b"<?xml") and b"<Error>" in answer.body[:200]:
            raise self._failed(answer, bucket, key)
        return answer

    def _put_multipart(self, bucket: str, key: str, path: Path, part: int, progress: Progress) -> str:
        upload_id, done = self._open_upload(bucket, key)
        parts, etag = send_parts(self._parts(), path, part, done,
                                 lambda span, digest: self._upload_part(bucket, key, upload_id, path, span, digest),
                                 progress)
        body = "".join(f"<Part><PartNumber>{n}</PartNumber><ETag>{tag}</ETag></Part>" for n, tag in parts)
        self._checked(self._request("POST", bucket, key, {"uploadId": upload_id},
                                    f"<CompleteMultipartUpload>{body}</CompleteMultipartUpload>".encode()),
                      bucket, key)
        return etag

    def _parts(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(PART_WORKERS, thread_name_prefix="s3-part")
            return self._pool

    def _open_upload(self, bucket: str, key: str) -> tuple[str, dict[int, tuple[int, str]]]:
        """The newest unfinished upload of ``key`` and its parts, or a new upload."""
        listed = self._xml(self._request("GET", bucket, query={"uploads": "", "prefix": key}), bucket, key)
        uploads = [(u.findtext(f"{_NS}Initiated"), u.findtext(f"{_NS}UploadId"))
                   for u in listed.iterfind(f"{_NS}Upload") if u.findtext(f"{_NS}Key") == key]
        if not uploads:
            created = self._xml(self._request("POST", bucket, key, {"uploads": ""}), bucket, key)
            return created.findtext(f"{_NS}UploadId"), {}
        upload_id = max(uploads)[1]
        parts, query = {}, {"uploadId": upload_id}
        while True:
            page = self._xml(self._request("GET", bucket, key, query), bucket, key)
            for p in page.iterfind(f"{_NS}Part"):
                parts[int(p.findtext(f"{_NS}PartNumber"))] = (int(p.findtext(f"{_NS}Size")),
                                                              p.findtext(f"{_NS}ETag").strip('"'))
            if page.findtext(f"{_NS}IsTruncated") != "true":
                return upload_id, parts
            query = {"uploadId": upload_id, "part-number-marker": page.findtext(f"{_NS}NextPartNumberMarker")}

    def _xml(self, answer: _Answer, bucket: str, key: str) -> ElementTree.Element:
        return ElementTree.fromstring(self._checked(answer, bucket, key).body)

    def _upload_part(self, bucket: str, key: str, upload_id: str, path: Path, span: Span, digest) -> str:
        """Send one part, streamed from the file; its ETag."""
        number, offset, length = span
        answer = self._request("PUT", bucket, key, {"partNumber": str(number), "uploadId": upload_id},
                               (path, offset, length), _md5_header(digest))
        return self._checked(answer, bucket, key).headers.get("ETag", "")

    def get_file(self, bucket: str, key: str, path: Path, progress: Progress = None) -> None:
        self.full().get_file(bucket, key, path, progress)

    def delete_prefix(self, bucket: str, prefix: str) -> None:
        self.full().delete_prefix(bucket, prefix)

    def close(self) -> None:
        """Close this thread's connection and the workers of parts and of the full store, if any."""
        self._drop_connection()
        if self._pool is not None:
            self._pool.shutdown()
        if self._full is not None:
            self._full.close()


def _md5_header(digest) -> dict[str, str]:
    return {"content-md5": base64.b64encode(digest.digest()).decode()}


def _backoff(attempt: int) -> None:
    time.sleep(random.uniform(0, min(20.0, 0.5 * 2 ** attempt)))


def _reason(exc: Exception) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {TIMEOUT_S} s"
    if isinstance(exc, (ConnectionRefusedError, OSError)) and not isinstance(exc, ConnectionResetError):
        return "connection refused or host unknown"
    return "the connection was closed"
