"""Imported once by the local executor's fork server, so that each forked runner starts ready:
its modules imported and OpenSSL initialised (creating the first HTTP client costs ~25 ms)."""

import httpx

from wml_runner import main  # noqa: F401  (imported for the fork server)

httpx.Client(verify=False).close()
