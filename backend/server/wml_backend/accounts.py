"""Accounts as administrators manage them, and the limits every account's runs are held to.

Each limit is the account's own when it has one, else the operator's default (``Settings``:
``wml backend start --account-slots ...``). Only an administrator creates, changes, disables
an account or gives it a new token; a disabled account's tokens stop working at once. Where the
executor cannot keep runs apart (``Executor.isolation_gap``), the first account is the only one
unless the operator said all accounts trust each other (``--trusted-accounts``).
"""

from __future__ import annotations

import logging
from typing import Callable, Optional

from wml_core.errors import Conflict, Forbidden, InvalidInput, NotFound, QuotaExceeded, WmlError, quoted
from wml_core.models import AccountCreated, AccountInfo, AccountLimits, AccountToken
from wml_core.private_files import write_private
from wml_core.states import RunState
from wml_backend.rundb import Account, RunRow, RunStore
from wml_backend.tokens import new_account_token, token_hash
from wml_backend.scheduler import limits_of, over_limits
from wml_backend.settings import Settings

log = logging.getLogger("wml_backend.accounts")
#: The embedded backend's first account, its administrator.
ADMIN_ACCOUNT = "local"
#: Ends a run (``Lifecycle.stop``): run, final state, reason.
StopRun = Callable[[RunRow, RunState, str], None]
#: Makes the cluster hold an account's quota (``Executor.sync_account``): name, GPUs, CPUs, memory.
SyncAccount = Callable[[str, int, Optional[float], Optional[int]], None]
#: The wire names of the limits, as stored.
_STORED = {"gpus": "gpu_quota", "slots": "slots", "cpus": "cpus", "memory_bytes": "memory_bytes",
           "max_queued": "max_queued"}


def max_queued_of(account: Account, settings: Settings) -> Optional[int]:
    """How many runs the account may have waiting (None: no limit)."""
    return settings.account_max_queued if account.max_queued is None else account.max_queued


class Accounts:
    """Account administration over the run store; ``stop`` ends a disabled account's queued runs;
    ``isolation_gap``: why the executor cannot keep runs of different accounts apart (None: it can);
    ``sync``: gives the executor an account's limits whenever they change (Kueue's queues)."""

    def __init__(self, settings: Settings, store: RunStore, stop: StopRun, isolation_gap: Optional[str] = None,
                 sync: Optional[SyncAccount] = None):
        self.settings, self.store, self.stop, self.isolation_gap = settings, store, stop, isolation_gap
        self.sync = sync or (lambda name, gpus, cpus, memory_bytes: None)

    def sync_all(self) -> None:
        """Give the executor every account's limits (at start: accounts made before Kueue was on)."""
        for account in self.store.accounts():
            try:
                self._sync(account)
            except WmlError as exc:
                log.warning("account %s: %s", account.name, exc)

    def _sync(self, account: Account) -> None:
        """Give the executor the limits in force for ``account``."""
        limits = limits_of(account, self.settings)
        self.sync(account.name, limits.gpus, limits.cpus, limits.memory_bytes)

    def _synced(self, account: Account, done: str) -> None:
        """``_sync``; if the cluster refuses, say that the account was ``done`` all the same."""
        try:
            self._sync(account)
        except WmlError as exc:
            raise type(exc)(f"account {account.name!r} was {done}, but the cluster does not hold its quota "
                            f"yet ({exc}); once that is fixed, run `wml accounts update {account.name}`") from None

    def info(self, account: Account) -> AccountInfo:
        """The account with the limits in force for it."""
        limits = limits_of(account, self.settings)
        return AccountInfo(name=account.name, admin=account.admin, disabled=account.disabled,
                           gpu_quota=limits.gpus, slots=limits.slots, cpus=limits.cpus,
                           memory_bytes=limits.memory_bytes, max_queued=max_queued_of(account, self.settings))

    def create(self, caller: Account, name: str, limits: AccountLimits) -> AccountCreated:
        """A new account with a GPU quota and its own limits; its token is shown once."""
        _admin_only(caller, "create accounts")
        if self.isolation_gap and not self.settings.trusted_accounts:
            raise Conflict(f"accounts: runs of different accounts cannot be kept apart here: {self.isolation_gap}; "
                           "start the backend as root, or with --trusted-accounts if all accounts trust each other")
        token = new_account_token()
        fields = {_STORED[k]: v for k, v in limits.model_dump().items()}
        self.store.create_account(Account(name=name, **fields), token_hash(token))
        self._synced(self._account(name), "created")
        return AccountCreated(name=name, gpu_quota=fields["gpu_quota"], token=token)

    def update(self, caller: Account, name: str, changes: AccountLimits) -> AccountInfo:
        """Change the limits given in ``changes`` (a null one goes back to the operator's default)."""
        _admin_only(caller, "change accounts")
        fields = {_STORED[k]: v for k, v in changes.model_dump(exclude_unset=True).items()}
        if fields.get("gpu_quota", 0) is None:
            raise InvalidInput("gpus: an account's GPU quota is a number (0 or more), never the default")
        account = self.store.update_account(name, **fields)
        self._synced(account, "changed")
        return self.info(account)

    def disable(self, caller: Account, name: str) -> AccountInfo:
        """Refuse the account's tokens from now on and halt its queued runs."""
        _admin_only(caller, "disable accounts")
        if self._account(name).admin:
            raise Conflict(f"account {name!r} is an administrator: it cannot be disabled")
        account = self.store.update_account(name, disabled=True)
        for run in self.store.runs(account=name, states=[RunState.QUEUED], transitions="none"):
            self.stop(run, RunState.HALTED, "its account was disabled by an administrator")
        return self.info(account)

    def rotate_token(self, caller: Account, name: str) -> AccountToken:
        """Give the account a new token; the old one stops working at once."""
        _admin_only(caller, "give accounts new tokens")
        token = new_account_token()
        self.store.set_token(name, token_hash(token))
        if name == ADMIN_ACCOUNT:  # the embedded backend's clients read it from $WML_HOME
            write_private(self.settings.home / "backend" / "token", token)
        return AccountToken(name=name, token=token)

    def check_submission(self, account: Account, runs: list[RunRow], total: int) -> None:
        """Refuse an experiment whose runs can never start within the account's limits, or whose
        ``total`` runs would take its queue over its limit."""
        why = over_limits(runs[0], limits_of(account, self.settings)) if runs else None
        if why:
            raise QuotaExceeded(why)
        most = max_queued_of(account, self.settings)
        if most is None:
            return
        waiting = self.store.count_runs(account.name, [RunState.QUEUED])
        if waiting + total > most:
            raise QuotaExceeded(f"account {account.name!r} may have at most {most} runs queued: it has "
                                f"{waiting} and this experiment adds {total}; wait for some to start, or cancel some")

    def _account(self, name: str) -> Account:
        """Account ``name``; ``NotFound`` if there is none."""
        found = self.store.account(name)
        if found is None:
            raise NotFound(f"no account {quoted(name)}")
        return found


def _admin_only(caller: Account, what: str) -> None:
    """``Forbidden`` unless ``caller`` is an administrator."""
    if not caller.admin:
        raise Forbidden(f"only an administrator may {what}")
