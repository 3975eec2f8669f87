"""Give the administrator account a new token, from the database's side.

``python -m wml_backend.admin_token [--database URL]`` is the operator's way back in when the
administrator's token is lost (on Kubernetes it is written only to the ``$WML_HOME`` of the replica
that created the account, and that folder goes with its pod). It needs what a replica needs: the
database (``WML_DATABASE``). It prints the new token once, on standard output; the old one stops
working at once.
"""

from __future__ import annotations

from typing import Optional

from wml_backend.accounts import ADMIN_ACCOUNT
from wml_backend.tokens import new_account_token, token_hash
from wml_backend.rundb import connect
from wml_backend.settings import Settings
from wml_backend.store_command import store_command
from wml_core.errors import InvalidInput


def reset(settings: Settings) -> str:
    """A new token for the administrator account of the settings' run store (the old one is revoked)."""
    store = connect(settings.database, settings.secrets_key_file)
    try:
        if not any(account.name == ADMIN_ACCOUNT for account in store.accounts()):
            raise InvalidInput(f"the database has no account {ADMIN_ACCOUNT!r}: start a backend against it first")
        token = new_account_token()
        store.set_token(ADMIN_ACCOUNT, token_hash(token))
        return token
    finally:
        store.close()


def main(argv: Optional[list[str]] = None) -> None:
    """Print a new administrator token."""
    store_command("wml_backend.admin_token", __doc__, reset, argv)


if __name__ == "__main__":
    main()
