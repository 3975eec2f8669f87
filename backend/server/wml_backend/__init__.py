"""wml_backend: the training service behind wml_jupyter (no Jupyter dependency)."""

__version__ = "0.1.0"
