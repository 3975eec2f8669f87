"""Executors run admitted runs' runners somewhere: on this host or on Kubernetes."""

from wml_backend.executors.base import Capacity, Executor, Launch

__all__ = ["Capacity", "Executor", "Launch"]
