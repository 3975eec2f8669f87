"""Imported once by the local executor's fork server, last, so that each forked runner starts
ready: its modules imported (the file store's and the sync's too: every run stores its log),
OpenSSL initialised (creating the first HTTP client costs ~25 ms), the paths a sandbox shows
found, and what the server made frozen (``gc.freeze``: a runner's collections never touch, and
so copy, the server's memory).
It also makes the server the reaper of what its runners leave when they exit."""

import encodings.cp437  # noqa: F401  (the names in a code zip: ``unpack_code``)
import gc
import shlex  # noqa: F401  (the warm start's parse of the command)
import warnings

import httpx

from wml_core.objectstore import file, sync  # noqa: F401  (imported for the fork server)
from wml_runner import main  # noqa: F401  (imported for the fork server)
from wml_runner.isolation import become_subreaper, runtime_paths

# What a runner leaves running when it exits (its user's /tmp cleaner) is reaped here, by the
# fork server's own wait for any child, which would warn about each.
become_subreaper()
warnings.filterwarnings("ignore", message="forkserver: waitpid returned unexpected pid")

httpx.Client(verify=False).close()
runtime_paths()  # what every isolated run's sandbox shows: found once, here
gc.freeze()
