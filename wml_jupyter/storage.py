"""The object store a client profile names (the embedded file store when none), and uploads to it.

The bytes go from here to the store; the backend only records, first, that the destination is
the account's (``Client.upload`` and ``claimed_upload`` claim it: data belongs to accounts).
This module is what ``wml upload`` imports: it stays light (no HTTP client library, no boto3
where ``LightS3Store`` serves the store), so a cold command starts sending at once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from wml_core.errors import BackendUnavailable, InvalidInput, error_of_answer
from wml_core.objectstore import ObjectStore, StoreConfig, open_store
from wml_core.objectstore.resolve import parse_destination, store_config_for, wml_home

from .config import Profile

#: Seconds the claim waits for the backend (as ``Client``'s calls do).
CLAIM_TIMEOUT_S = 60.0


def store_config(profile: Profile) -> StoreConfig:
    """``s3://bucket/prefix`` with the profile's endpoint, or the embedded file store."""
    return store_config_for(profile.storage, profile.endpoint, wml_home())


def client_store(profile: Profile) -> ObjectStore:
    """Open the profile's store."""
    return open_store(store_config(profile))


def upload_store(profile: Profile) -> ObjectStore:
    """The store an upload goes to: ``LightS3Store`` where it serves the profile's S3, else the full one."""
    from wml_core.objectstore.s3http import light_store
    config = store_config(profile)
    return light_store(config) or open_store(config)


def upload(profile: Profile, path: str | os.PathLike, target: str, progress: Any = None):
    """Sync a local file or directory to ``target`` (``BUCKET[/PREFIX]``, claimed already); return what was sent."""
    from wml_core.objectstore.sync import upload as sync_upload
    bucket, prefix = checked_upload(path, target)
    return sync_upload(upload_store(profile), Path(path), bucket, prefix, progress=progress)


def checked_upload(path: str | os.PathLike, target: str) -> tuple[str, str]:
    """The (bucket, prefix) an upload of ``path`` to ``target`` goes to, once both are checked."""
    if not Path(path).exists():
        raise InvalidInput(f"{path}: no such file or directory")
    return parse_destination(target)


def claimed_upload(profile: Profile, path: str | os.PathLike, target: str, progress: Any = None):
    """``Client.upload`` for a profile that names its backend, without the client's imports: one
    claim request from the standard library, then the sync (``wml upload`` from a cold process)."""
    bucket, prefix = checked_upload(path, target)
    claim(profile, bucket, prefix)
    return upload(profile, path, target, progress=progress)


def claim(profile: Profile, bucket: str, prefix: str) -> None:
    """Record ``bucket/prefix`` as the account's at the profile's backend (``POST /v1/data/claims``);
    the backend's refusal is raised as its ``WmlError``."""
    import json
    import urllib.error
    import urllib.request
    url = profile.backend.rstrip("/")
    headers = {"Content-Type": "application/json",
               **({"Authorization": f"Bearer {profile.token}"} if profile.token else {})}
    body = json.dumps({"bucket": bucket, "prefix": prefix}).encode()
    try:
        request = urllib.request.Request(f"{url}/v1/data/claims", method="POST", headers=headers, data=body)
        with urllib.request.urlopen(request, timeout=CLAIM_TIMEOUT_S) as answer:
            answer.read()
    except urllib.error.HTTPError as err:
        raise error_of_answer(err.code, err.reason, err.read()) from None
    except (urllib.error.URLError, OSError, ValueError) as err:
        cause = getattr(err, "reason", err)
        raise BackendUnavailable(f"cannot reach the backend at {url} ({type(cause).__name__})") from None
