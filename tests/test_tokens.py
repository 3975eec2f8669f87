"""The tokens the backend hands out, as users pass them on: each one, given to ``%wml config --token``,
works; none reads as an option (bare ``token_urlsafe`` ones began with ``-`` 1 time in 64, and then
``%wml config --token $token`` failed with "argument --token: expected one argument")."""

from __future__ import annotations

from IPython.core.interactiveshell import InteractiveShell
from ipython_shell import new_shell

from wml_jupyter.client import Client
from wml_jupyter.config import load_profile

#: Tokens tried: with 1 in 64 beginning with ``-``, all 300 pass by chance 1 time in 110.
TOKENS_TRIED = 300


def test_every_token_handed_out_can_be_given_to_wml_config_token(backend, monkeypatch):
    monkeypatch.delenv("WML_TOKEN")  # the token comes from the configuration the magic writes
    shell = new_shell()
    try:
        token = backend.token  # the one the backend made on its first start
        for _ in range(TOKENS_TRIED):
            shell.run_line_magic("wml", f"config --token {token}")
            assert load_profile().token == token
            client = Client()
            assert client.usage().account == "local"
            token = client.rotate_token("local").token
    finally:
        InteractiveShell.clear_instance()
