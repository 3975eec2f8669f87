"""Client configuration: profiles in ``$WML_HOME/config.yaml``, overridden by the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Optional

from wml_core.errors import InvalidInput
from wml_core.private_files import write_private
from wml_core.objectstore.resolve import wml_home

#: Keys a profile may set, and what each means.
KEYS = {
    "backend": "URL of the training backend (unset: the embedded backend on this machine)",
    "token": "API token for the backend",
    "storage": "default object store: s3://bucket/prefix (unset: the embedded file store)",
    "endpoint": "S3 endpoint URL (MinIO, Ceph, IBM COS...; unset: AWS)",
    "aws_profile": "boto3 profile to take credentials from",
}
#: Keys whose values are shown masked.
SECRET_KEYS = {"token"}
#: Environment variables that override a profile's keys.
ENV = {"backend": "WML_BACKEND", "token": "WML_TOKEN", "storage": "WML_STORAGE", "endpoint": "AWS_ENDPOINT_URL"}


@dataclass(frozen=True)
class Profile:
    """Where the client sends work and keeps data."""

    backend: Optional[str] = None
    token: Optional[str] = None
    storage: Optional[str] = None
    endpoint: Optional[str] = None
    aws_profile: Optional[str] = None

    def masked(self) -> dict:
        """The profile for display: secrets replaced by ``****`` and their last 4 characters."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = _mask(value) if f.name in SECRET_KEYS and value else value
        return out


def _mask(value: str) -> str:
    return "****" + value[-4:] if len(value) > 8 else "****"


def config_path(home: Optional[Path] = None) -> Path:
    """The configuration file."""
    return (home or wml_home()) / "config.yaml"


def _read(home: Optional[Path] = None) -> dict:
    path = config_path(home)
    if not path.exists():
        return {}
    import yaml  # only where there is a file: a command without one starts sooner
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", 0) + 1
        raise InvalidInput(f"{path}:{line}: not valid YAML") from None
    if not isinstance(data, dict):
        raise InvalidInput(f"{path}:1: expected a mapping of profiles")
    return data


def load_profile(name: Optional[str] = None, home: Optional[Path] = None) -> Profile:
    """The named (or current) profile with environment overrides applied."""
    data = _read(home)
    name = name or os.environ.get("WML_PROFILE") or data.get("profile", "default")
    raw = (data.get("profiles") or {}).get(name) or {}
    profile = Profile(**{k: raw.get(k) for k in KEYS})
    overrides = {k: os.environ[v] for k, v in ENV.items() if os.environ.get(v)}
    return replace(profile, **overrides)


def set_value(key: str, value: Optional[str], profile: Optional[str] = None, home: Optional[Path] = None) -> None:
    """Set (or with ``None`` remove) one key of a profile in the configuration file."""
    if key not in KEYS:
        raise InvalidInput(f"config: unknown key {key!r}; valid keys: {', '.join(KEYS)}")
    data = _read(home)
    name = profile or data.get("profile", "default")
    section = data.setdefault("profiles", {}).setdefault(name, {})
    if value is None:
        section.pop(key, None)
    else:
        section[key] = value
    import yaml
    write_private(config_path(home), yaml.safe_dump(data, sort_keys=True))
