"""Kubernetes resource quantities ("500m", "4Gi", "1e3") as numbers."""

from __future__ import annotations

import re
from decimal import Decimal

_SUFFIX = {"": 1, "m": Decimal("0.001"), "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
           "E": 10**18, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_QUANTITY = re.compile(r"([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(|m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)")


def parse(quantity: str | int | float) -> Decimal:
    """The value of a quantity: ``parse("500m") == Decimal("0.5")``; ValueError if malformed."""
    match = _QUANTITY.fullmatch(str(quantity).strip())
    if not match:
        raise ValueError(f"not a quantity: {quantity!r}")
    return Decimal(match.group(1)) * _SUFFIX[match.group(2)]
