"""API tokens: how they are made and how they are stored."""

from __future__ import annotations

import hashlib
import secrets

#: What every account token begins with: it never reads as a command-line option (a token that
#: began with ``-`` would: 1 in 64 of bare ``token_urlsafe`` ones), and a secret scanner can tell it.
ACCOUNT_TOKEN_PREFIX = "wml_"


def new_account_token() -> str:
    """A new account token (shown once to its owner; only its hash is kept)."""
    return ACCOUNT_TOKEN_PREFIX + secrets.token_urlsafe(32)


def new_runner_token() -> str:
    """A new token for one attempt of a run, which its runner alone holds (only its hash is kept)."""
    return secrets.token_urlsafe(24)


def token_hash(token: str) -> str:
    """How tokens are stored: never in plain text."""
    return hashlib.sha256(token.encode()).hexdigest()
