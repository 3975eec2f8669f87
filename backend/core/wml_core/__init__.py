"""wml_core: what the client, the server and the runner share.

The wire models, run and experiment states, errors, the manifest, the options a training
submission takes, the hyperparameter space, the billing rule, object stores, and the metric-line
format. It imports nothing of the server, the runner or the client, and nothing heavy at import time.
"""

__version__ = "0.1.0"
