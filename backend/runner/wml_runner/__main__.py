"""``python -m wml_runner``: run the run named by ``WML_RUN_ID``."""

import sys

from wml_runner.main import main

sys.exit(main())
