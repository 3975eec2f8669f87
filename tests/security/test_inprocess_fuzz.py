"""Property fuzzing of the three readers of untrusted input, in-process (fast): whatever the bytes,
the only exception is the expected ``InvalidInput``, so the API can never answer 500."""

from __future__ import annotations

import base64

import corpus
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from wml_core.errors import InvalidInput  # noqa: E402
from wml_core.manifest import load_manifest  # noqa: E402
from wml_core.search_space import parse_sweep_flag  # noqa: E402
from wml_backend.submit import decode_code  # noqa: E402

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)
GOOD_ZIP = corpus._zip(("data/a.txt", b"a" * 100))
#: YAML-ish fragments that make random text reach deeper into the manifest reader.
FRAGMENTS = ["name: x\n", "framework: {name: custom, command: run}\n", "gpus: ", "memory: ", "hyperparameters:\n",
             "  lr: {uniform: [", "search: {algorithm: grid, runs: ", "&a ", "*a", "<<: *a\n", "!!int ", "[", "]",
             "{", "}", "- ", "\n  ", ": ", "1e309", "-1", ".nan", "\udcff", "\x00", "\t", "'", '"', "..", "~"]


def refused_or_accepted(call, *args) -> None:
    """``call(*args)`` returns or raises ``InvalidInput``; anything else is a bug."""
    try:
        call(*args)
    except InvalidInput as err:
        assert str(err).strip()


@FUZZ
@given(st.data())
def test_a_mutated_code_zip_is_refused_or_accepted(data):
    mutated = bytearray(GOOD_ZIP)
    for _ in range(data.draw(st.integers(1, 8))):
        mutated[data.draw(st.integers(0, len(mutated) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(mutated)))
    refused_or_accepted(decode_code, base64.b64encode(bytes(mutated[:cut] + mutated[cut + 1:])).decode())


@FUZZ
@given(st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=8)), max_size=40).map("".join))
def test_any_manifest_text_is_refused_or_accepted(text):
    refused_or_accepted(load_manifest, text)


#: Flags shaped like NAME=DISTRIBUTION(ARGS) with random arguments, and plain random text.
FLAGS = st.one_of(st.text(max_size=60), st.builds(
    lambda name, dist, args: f"{name}={dist}({args})", st.sampled_from(["lr", "x", "1"]),
    st.sampled_from(["uniform", "loguniform", "int", "quniform", "choice"]),
    st.text("0123456789.,-+einfa ", max_size=30)))


@FUZZ
@given(FLAGS)
def test_any_sweep_flag_is_refused_or_accepted(flag):
    refused_or_accepted(parse_sweep_flag, flag)
