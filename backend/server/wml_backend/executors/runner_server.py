"""Imported first by the local executor's fork server (``local``), so that no runner it forks
runs the backend's main module again.

multiprocessing runs the parent's main module again in each child it starts, as
``__mp_main__`` (a few milliseconds of CPU per runner), unless the child's ``__main__`` is that
module already. The backend's is the daemon (``python -m wml_backend.daemon``): imported once
here, it is this server's ``__main__``, and so each runner's."""

import sys

from wml_backend import daemon

sys.modules["__main__"] = daemon
