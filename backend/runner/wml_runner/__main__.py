"""``python -m wml_backend.runner``: run the run named by ``WML_RUN_ID``."""

import sys

from .main import main

sys.exit(main())
