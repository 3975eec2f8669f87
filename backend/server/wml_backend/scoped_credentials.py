"""Scoped, short-lived credentials of the default S3 store for runs (issue #13 item 2).

A run never receives the operator's keys. Its runner asks the backend (with its attempt's token)
for a credential, and again before that one expires; the backend asks the store's STS for one
(``AssumeRole`` with an inline session policy) that may read the run's data prefix and read and
write its ``training-<id>/`` results prefix, nothing else, for ``store_credential_s`` seconds.
When the attempt ends its token is revoked, so no new credential is given; on MinIO the
attempt's credentials are revoked at once too (its ``revoke-tokens`` admin API), elsewhere they
expire. A store without STS (or an operator who wants the old way) is the explicit
``WML_STORE_CREDENTIALS=operator``: runs are then handed the operator's keys, as documented.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import urllib.parse
from typing import Callable, Optional

import boto3
import httpx
from botocore import exceptions as bex
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config

from wml_core.errors import StorageError
from wml_core.models import StoreCredential
from wml_core.objectstore import open_store
from wml_backend.rundb import RunRow
from wml_backend.settings import Settings
from wml_core.states import RunState

log = logging.getLogger("wml_backend")

#: Seconds an STS call may take before the runner is told the store cannot scope credentials.
STS_TIMEOUT_S = 10


def scoped(settings: Settings, secret: Optional[dict]) -> bool:
    """Whether a run with manifest credentials ``secret`` gets a scoped credential: it uses the
    default store, which is S3, and the operator did not ask for the operator's keys."""
    return secret is None and settings.store_config.kind == "s3" and not settings.operator_store_keys


def session_policy(data: Optional[tuple[str, str]], results: tuple[str, str]) -> dict:
    """The IAM policy of a run's session: read (and list) ``data``'s (bucket, prefix), read, list
    and write ``results``' (bucket, prefix); ``prefix`` is a folder (``data`` is not ``data2/``)."""
    statements = []
    for place, actions in ((data, ["s3:GetObject"]),
                           (results, ["s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload",
                                      "s3:ListMultipartUploadParts"])):
        if place is None:
            continue
        bucket, prefix = place
        folder = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        statements += [
            {"Effect": "Allow", "Action": actions, "Resource": [f"arn:aws:s3:::{bucket}/{folder}*"]},
            {"Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": [f"arn:aws:s3:::{bucket}"],
             **({"Condition": {"StringLike": {"s3:prefix": [f"{folder}*", folder.rstrip("/")]}}} if folder else {})}]
    # Resuming a multipart upload lists the bucket's open uploads (their keys only).
    statements.append({"Effect": "Allow", "Action": ["s3:ListBucketMultipartUploads"],
                       "Resource": [f"arn:aws:s3:::{results[0]}"]})
    return {"Version": "2012-10-17", "Statement": statements}


def revoke_type(run_id: str, attempt: int) -> str:
    """The tag of every credential issued to ``attempt`` of ``run_id`` (MinIO revokes by it)."""
    return f"wml-{run_id}-{attempt}"


def issue(settings: Settings, run: RunRow, data: Optional[tuple[str, str]]) -> StoreCredential:
    """A fresh credential for ``run``'s attempt, scoped to ``data`` and its results; a one-line
    ``StorageError`` when the store gives none (no STS: say how the operator may choose)."""
    bucket, _, prefix = run.results.partition("/")
    _ensure_bucket(settings, bucket)  # the credential may write in it, not create it
    sts = boto3.client("sts", endpoint_url=settings.store_config.endpoint, region_name=_region(),
                       config=Config(connect_timeout=2, read_timeout=STS_TIMEOUT_S,
                                     retries={"mode": "standard", "max_attempts": 2}))
    if settings.store_config.endpoint:  # MinIO: tagged, so that ``revoke`` can revoke them at once
        tag = revoke_type(run.id, run.attempt)
        sts.meta.events.register("before-call.sts.AssumeRole",
                                 lambda params, **_: params["body"].update(TokenRevokeType=tag))
    try:
        answer = sts.assume_role(RoleArn=settings.store_role_arn, RoleSessionName=f"wml-{run.id}"[:64],
                                 DurationSeconds=settings.store_credential_s,
                                 Policy=json.dumps(session_policy(data, (bucket, prefix)), separators=(",", ":")))
    except (bex.BotoCoreError, bex.ClientError) as exc:
        code = exc.response.get("Error", {}).get("Code", "") if isinstance(exc, bex.ClientError) else type(exc).__name__
        raise StorageError(f"the default store at {settings.store_config.describe()} gave no scoped credential "
                           f"for run {run.id} (STS AssumeRole: {code}); an operator whose store has no STS may "
                           f"hand runs its own keys with WML_STORE_CREDENTIALS=operator") from exc
    found = answer["Credentials"]
    return StoreCredential(access_key=found["AccessKeyId"], secret_key=found["SecretAccessKey"],
                           session_token=found["SessionToken"], expires=found["Expiration"])


def _ensure_bucket(settings: Settings, bucket: str) -> None:
    """Create the results bucket of the default store if it is missing (with the backend's keys)."""
    store = open_store(settings.store_config)
    try:
        if not store.bucket_exists(bucket):
            store.create_bucket(bucket)
    finally:
        store.close()


def _region() -> str:
    """The backend's region (boto3's chain), as STS and SigV4 want one."""
    return boto3.Session().region_name or "us-east-1"


def revoke(settings: Settings, run_id: str, attempt: int) -> None:
    """Revoke every credential issued to ``attempt`` of ``run_id`` now, where the store can (MinIO's
    admin API); elsewhere they expire within ``store_credential_s``. Never raises: hardening."""
    endpoint = settings.store_config.endpoint
    found = boto3.Session().get_credentials()
    if not endpoint or found is None or not _is_minio(endpoint):
        return  # AWS and others: no per-session revocation; they expire
    frozen = found.get_frozen_credentials()
    query = urllib.parse.urlencode({"user": frozen.access_key, "tokenRevokeType": revoke_type(run_id, attempt)})
    request = AWSRequest("POST", f"{endpoint.rstrip('/')}/minio/admin/v3/revoke-tokens/builtin?{query}", data=b"")
    S3SigV4Auth(frozen, "s3", _region()).add_auth(request)
    try:
        answer = httpx.post(request.url, headers=dict(request.headers.items()), timeout=STS_TIMEOUT_S)
        if answer.status_code >= 300:
            log.debug("the store did not revoke run %s's credentials (%s)", run_id, answer.status_code)
    except httpx.HTTPError as exc:
        log.debug("the store did not revoke run %s's credentials (%s)", run_id, type(exc).__name__)


@functools.lru_cache(maxsize=8)
def _is_minio(endpoint: str) -> bool:
    """Whether the S3 service at ``endpoint`` is MinIO (it says so in its ``Server`` header)."""
    try:
        return httpx.head(endpoint, timeout=STS_TIMEOUT_S).headers.get("server", "").startswith("MinIO")
    except httpx.HTTPError:
        return False


def revoker(settings: Settings) -> Callable[[RunRow], None]:
    """What ``Lifecycle.on_move`` calls: a run whose attempt is over (it ended, or was queued again
    as its next attempt) has that attempt's credentials revoked (off the caller's thread: a slow
    store delays no transition, and the next attempt's credentials are tagged apart)."""
    def revoke_if_over(run: RunRow) -> None:
        if settings.store_config.kind == "s3" and not settings.operator_store_keys and not run.state.active:
            ended = run.attempt - 1 if run.state is RunState.QUEUED else run.attempt
            threading.Thread(target=revoke, args=(settings, run.id, ended), daemon=True).start()
    return revoke_if_over
