"""Data belongs to accounts: which buckets and prefixes of the backend's default store an account
may claim (``wml upload``), name as its training data, and have its results written to.

An account owns what it claimed (``wml upload`` claims its destination first, ``POST
/v1/data/claims``) and its runs' results (``training-<run id>/``): ``RunStore.claim_data`` and
``data_owners`` keep the record. Another account's data is refused as a missing bucket is, word for
word, so a refusal never says that the bucket exists. An account that is not an administrator may
name as its data only what it owns; the operator's data, put in the store by other means, only an
administrator may name or claim. Stores a manifest names itself (with a ``connection``) are the
user's own business: the backend reaches them with the user's credentials, or none.
"""

from __future__ import annotations

import re

from wml_core.definition import Definition, Location
from wml_core.errors import InvalidInput, NotFound, quoted
from wml_core.models import DataClaim
from wml_core.objectstore import ObjectStore, open_store
from wml_core.objectstore.resolve import parse_destination
from wml_backend.rundb import Account, RunStore
from wml_backend.settings import Settings

#: A prefix segment named as runs' results folders are (``training-<experiment>-<n>``): results
#: go only where the backend writes them, so nobody may claim such a name ahead of a run.
RESULTS_SEGMENT = re.compile(r"training-[a-z0-9]+-\d+")
#: Where a run's results go under its results location (``training-<run id>/``).
RESULTS_FOLDER = "training-"


def folder(prefix: str) -> str:
    """The keys a bucket's ``prefix`` names, as a key prefix: ``a/b`` is ``a/b/``, none is the bucket."""
    prefix = prefix.strip("/")
    return f"{prefix}/" if prefix else ""


def _overlap(a: str, b: str) -> bool:
    """Whether two key prefixes share keys (one starts with the other)."""
    return a.startswith(b) or b.startswith(a)


class DataOwnership:
    """Claims and checks against the run store's record of who owns what in the default store."""

    def __init__(self, settings: Settings, store: RunStore):
        self.settings, self.store = settings, store

    def claim(self, account: Account, claim: DataClaim) -> DataClaim:
        """Make ``claim`` the account's, unless another account owns data there (or, for an account
        that is not an administrator, data nobody owns is there): ``NotFound``."""
        bucket, prefix = self._target(claim)
        target = f"{bucket}/{prefix}".rstrip("/")
        area = folder(prefix)
        self._refuse_results_location(bucket, area, target)
        if account.name in self.store.data_owners(bucket, area, inside=True):
            return DataClaim(bucket=bucket, prefix=prefix)  # its own already: a re-upload
        if (not account.admin and self._default_store().holds_objects(bucket, area)) or \
                self.store.claim_data(account.name, bucket, area):
            raise NotFound(f"bucket {quoted(target)} is not free to claim: it holds data that is not yours; "
                           "upload to a bucket or prefix of your own")
        return DataClaim(bucket=bucket, prefix=prefix)

    def check(self, account: Account, definition: Definition) -> None:
        """At submit, for a definition on the default store: refuse data the account may not read
        and a results location inside another account's data, as missing buckets."""
        ds = definition.data_store
        if ds.training_data is not None and not self.may_read(account, ds.training_data):
            raise self._default_store().missing(ds.training_data.bucket)
        results = ds.training_results
        owners = self.store.data_owners(results.bucket, folder(results.prefix) + RESULTS_FOLDER, inside=True)
        if owners - {account.name}:
            raise self._default_store().missing(results.bucket)

    def may_read(self, account: Account, data: Location) -> bool:
        """Whether the account may train on ``data``: nobody else owns any of it, and it is the
        account's own (an administrator's: or nobody's)."""
        area = folder(data.prefix)
        if self.store.data_owners(data.bucket, area) - {account.name}:
            return False
        return account.admin or account.name in self.store.data_owners(data.bucket, area, inside=True)

    def _target(self, claim: DataClaim) -> tuple[str, str]:
        """The claim's bucket and prefix, checked as ``wml upload`` checks its destination."""
        if "/" in claim.bucket:
            raise InvalidInput(f"bucket: {quoted(claim.bucket)} is not a bucket name")
        prefix = claim.prefix.strip("/")
        bucket, prefix = parse_destination(f"{claim.bucket}/{prefix}" if prefix else claim.bucket)
        named = next((s for s in prefix.split("/") if RESULTS_SEGMENT.fullmatch(s)), None)
        if named:
            raise InvalidInput(f"prefix: {quoted(named)} is named as runs' results are (training-<run id>); "
                               "choose another name")
        return bucket, prefix

    def _refuse_results_location(self, bucket: str, area: str, target: str) -> None:
        """Nobody claims where runs that name no results location store theirs."""
        results_bucket, results_prefix = self.settings.default_results
        if bucket == results_bucket and _overlap(area, folder(results_prefix)):
            raise InvalidInput(f"bucket {quoted(target)} holds the results of runs; upload elsewhere")

    def _default_store(self) -> ObjectStore:
        return open_store(self.settings.store_config)
