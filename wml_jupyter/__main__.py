"""``python -m wml_jupyter`` is the ``wml`` command."""

import sys

from .cli import main

sys.exit(main())
