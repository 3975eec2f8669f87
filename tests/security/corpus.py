"""A corpus of bad inputs, as data and small generators: every one must be refused clearly.

Each case is one input a user (or an attacker) could give: a manifest file, a ``--sweep``
flag, a code zip, a raw REST request, or a command line. The channel tests (``test_corpus_*``)
drive every case through the CLI, the REST API and the magics and check that each is refused
with a clear message, no traceback and no partial state.
"""

from __future__ import annotations

import base64
import functools
import io
import os
import re
import stat
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve().parent
BAD_MANIFESTS = HERE.parent / "manifests" / "bad"
_EXPECT = re.compile(rb"# expect: (\d+): (\S+)")

#: A manifest that validates, runs ``true`` and uses the default store: the base of the
#: sweep and zip cases, so that only the sweep or the zip is wrong.
GOOD_MANIFEST = "name: corpus\nframework: {name: custom, command: 'true'}\n"
#: The biggest code zip the backend takes (``settings.MAX_CODE_BYTES``).
MAX_CODE_BYTES = 64 << 20


@dataclass(frozen=True)
class Case:
    """One bad input; ``mentions`` are words its error message must contain (file, field)."""

    id: str
    category: str
    mentions: tuple[str, ...] = ()


@dataclass(frozen=True)
class ManifestCase(Case):
    """A manifest file's bytes."""

    data: bytes = b""
    filename: str = "manifest.yml"


@dataclass(frozen=True)
class SweepCase(Case):
    """A ``--sweep`` flag (given with GOOD_MANIFEST, or ``manifest`` when set)."""

    flag: str = ""
    runs: Optional[int] = None
    manifest: str = GOOD_MANIFEST


@dataclass(frozen=True)
class ZipCase(Case):
    """A code zip's bytes (submitted with GOOD_MANIFEST)."""

    data: bytes = b""


@dataclass(frozen=True)
class RequestCase(Case):
    """A raw REST request: ``json`` (any value, even invalid) or raw ``content`` bytes."""

    method: str = "POST"
    path: str = "/v1/experiments"
    json: Any = None
    content: Optional[bytes] = None
    headers: dict = field(default_factory=dict)
    #: False: send no token (or the one in ``headers``).
    auth: bool = True


@dataclass(frozen=True)
class ArgvCase(Case):
    """A ``wml`` command line; ``{manifest}``, ``{tmp}``... are filled in from ``Paths``.

    ``magic``: the same request as a ``%wml`` line, where the magics offer it.
    """

    argv: tuple[str, ...] = ()
    magic: Optional[str] = None


# ---- manifests ----------------------------------------------------------------------------

def expected_fields(data: bytes) -> tuple[str, ...]:
    """The fields a ``tests/manifests/bad`` file's ``# expect:`` comments name."""
    return tuple(dict.fromkeys(m.group(2).decode() for m in _EXPECT.finditer(data)))


def bad_manifest_files() -> list[ManifestCase]:
    """The hand-written bad manifests of ``tests/manifests/bad`` (each with its expected fields)."""
    cases = []
    for path in sorted(BAD_MANIFESTS.glob("*.yml")):
        data = path.read_bytes()
        fields = expected_fields(data)[:1]  # the first is enough to show the message is located
        cases.append(ManifestCase(f"file-{path.stem}", "manifest-file", (path.name, *fields), data, path.name))
    return cases


def _manifest(case_id: str, category: str, text: str | bytes, *mentions: str) -> ManifestCase:
    data = text.encode() if isinstance(text, str) else text
    return ManifestCase(case_id, category, (f"{case_id}.yml", *mentions), data, f"{case_id}.yml")


def _with(**fields: str) -> str:
    """GOOD_MANIFEST's fields with some replaced or added (each value is YAML text)."""
    base = {"name": "corpus", "framework": "{name: custom, command: 'true'}"}
    base.update(fields)
    return "".join(f"{key}: {value}\n" for key, value in base.items())


def huge_manifests() -> list[ManifestCase]:
    """Manifests over a megabyte: a long comment, a long value, many keys."""
    mb = 1 << 20
    return [
        _manifest("huge-comment", "huge", GOOD_MANIFEST + "#" + "x" * (mb + 10) + "\n", "manifest"),
        _manifest("huge-description", "huge", _with(description="a" * (mb + 10)), "manifest"),
        _manifest("huge-many-keys", "huge", GOOD_MANIFEST + "".join(f"k{i}: {i}\n" for i in range(120_000)),
                  "manifest"),
    ]


def non_utf8_manifests() -> list[ManifestCase]:
    """Bytes that are not UTF-8 text, or are text YAML refuses."""
    good = GOOD_MANIFEST.encode()
    return [
        _manifest("latin1", "encoding", good + "description: caf\xe9\n".encode("latin-1"), "UTF-8"),
        _manifest("byte-ff", "encoding", b"\xff\xfe\xfd" + good, "UTF-8"),
        _manifest("utf16", "encoding", GOOD_MANIFEST.encode("utf-16"), "UTF-8"),
        _manifest("lone-continuation", "encoding", good + b"description: \x80\n", "UTF-8"),
        _manifest("overlong-slash", "encoding", good + b"description: \xc0\xaf\n", "UTF-8"),
        _manifest("surrogate-bytes", "encoding", good + b"description: \xed\xa0\x80\n", "UTF-8"),
        _manifest("nul-byte", "encoding", good + b"description: a\x00b\n", "yaml"),
        _manifest("escape-char", "encoding", good + b"description: a\x1bb\n", "yaml"),
        _manifest("binary-garbage", "encoding", bytes(range(256)) * 4, "manifest"),
    ]


def yaml_bombs() -> list[ManifestCase]:
    """Billion laughs in several shapes: each must be refused fast, not expanded."""
    laughs = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for level in "bcdefghi":
        prev = chr(ord(level) - 1)
        laughs.append(f"{level}: &{level} [" + ",".join([f"*{prev}"] * 9) + "]")
    billion = GOOD_MANIFEST + "\n".join(laughs) + "\n"
    quadratic = GOOD_MANIFEST + f"s: &s {'x' * 20_000}\n" + "l: [" + ",".join(["*s"] * 90) + "]\n"
    merge = GOOD_MANIFEST + "m0: &m0 {a: 1, b: 2}\n" + "".join(
        f"m{i}: &m{i} {{<<: [*m{i - 1}, *m{i - 1}], k{i}: {i}}}\n" for i in range(1, 60))
    in_params = "name: corpus\nframework: {name: custom, command: 'true'}\nhyperparameters:\n" + \
        "\n".join("  " + line for line in laughs) + "\n"
    return [
        _manifest("bomb-billion-laughs", "bomb", billion, "manifest"),
        _manifest("bomb-quadratic", "bomb", quadratic, "l"),
        _manifest("bomb-merge-keys", "bomb", merge, "manifest"),
        _manifest("bomb-in-hyperparameters", "bomb", in_params, "manifest"),
        _manifest("bomb-self-alias", "bomb", GOOD_MANIFEST + "x: &x [*x]\n", "x[0]"),
    ]


def deep_manifests() -> list[ManifestCase]:
    """Nesting a thousand (or a hundred thousand) levels deep, in every YAML style."""
    block = GOOD_MANIFEST + "deep:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(1000)) + \
        "  " * 1001 + "end\n"
    return [
        _manifest("deep-flow-lists", "deep", GOOD_MANIFEST + "deep: " + "[" * 1000 + "]" * 1000 + "\n", "yaml"),
        _manifest("deep-flow-maps", "deep", GOOD_MANIFEST + "deep: " + "{a: " * 1000 + "1" + "}" * 1000 + "\n",
                  "manifest"),
        _manifest("deep-block-maps", "deep", block, "manifest"),
        _manifest("deep-block-lists", "deep", GOOD_MANIFEST + "deep:\n" + "- " * 1000 + "x\n", "manifest"),
        _manifest("deep-100k-lists", "deep", GOOD_MANIFEST + "deep: " + "[" * 100_000 + "]" * 100_000 + "\n",
                  "yaml"),
        _manifest("deep-in-search", "deep", _with(search="[" * 1000 + "]" * 1000), "yaml"),
        _manifest("deep-unclosed", "deep", GOOD_MANIFEST + "deep: " + "[" * 5000 + "\n", "yaml"),
    ]


#: Values of the wrong type, by what they are.
WRONG = {"list": "[1, 2]", "mapping": "{a: 1}", "bool": "true", "string": "lots", "huge": "1" + "0" * 400,
         "negative": "-3", "float": "2.5", "inf": ".inf", "nan": ".nan", "null-tag": "!!int abc"}
#: Manifest fields and the wrong values each is tried with.
WRONG_TYPES = {
    "name": ["list", "mapping", "huge"],
    "gpus": ["list", "string", "negative", "float", "huge", "bool", "null-tag"],
    "cpus": ["mapping", "string", "negative", "inf", "nan", "bool", "huge"],
    "memory": ["list", "negative", "string", "inf", "bool", "huge"],
    "learners": ["string", "negative", "huge", "float"],
    "framework": ["list", "string", "bool"],
    "data_stores": ["mapping", "string"],
    "hyperparameters": ["list", "string"],
    "search": ["list", "string"],
    "max_retries": ["negative", "huge", "string"],
}


def wrong_type_manifests() -> list[ManifestCase]:
    """Each field with values of the wrong type or out of range."""
    return [_manifest(f"type-{name}-{kind}", "wrong-type", _with(**{name: WRONG[kind]}), name)
            for name, kinds in WRONG_TYPES.items() for kind in kinds]


def search_manifests() -> list[ManifestCase]:
    """``search.runs`` and friends out of range, and unknown fields at every level."""
    runs = {"zero": "0", "negative": "-5", "too-many": "1001", "googol": "1" + "0" * 100, "string": "many",
            "inf": ".inf", "list": "[1]"}
    cases = [_manifest(f"runs-{kind}", "runs", _with(search=f"{{runs: {value}}}"), "search.runs")
             for kind, value in runs.items()]
    cases += [
        _manifest("unknown-top", "unknown-field", _with(colour="blue"), "colour"),
        _manifest("unknown-framework", "unknown-field", _with(framework="{name: custom, command: 'true', gpu: 1}"),
                  "framework.gpu"),
        _manifest("unknown-search", "unknown-field", _with(search="{algoritm: grid}"), "search.algoritm"),
        _manifest("unknown-store", "unknown-field",
                  _with(data_stores="[{id: s, type: file, bukket: x}]"), "data_stores[0].bukket"),
        _manifest("hp-int-huge", "range", _with(hyperparameters="{n: {int: [0, 1" + "0" * 400 + "]}}"),
                  "hyperparameters.n"),
        _manifest("hp-quniform-overflow", "range", _with(hyperparameters="{x: {quniform: [0, 1.0e+300, 1.0e-300]}}"),
                  "hyperparameters.x"),
        _manifest("hp-choice-huge-list", "range", _with(hyperparameters="{x: [" + ",".join(["[1]"] * 5000) + "]}"),
                  "manifest"),
        _manifest("early-stopping-huge", "range", _with(search="{metric: acc, early_stopping: {min_steps: 1" +
                                                        "0" * 30 + "}}"), "min_steps"),
        _manifest("store-prefix-dotdot", "path",
                  _with(data_stores="[{id: s, training_data: {container: b/../../etc}}]"), "training_data.container"),
        _manifest("store-bucket-dotdot", "path", _with(data_stores="[{id: s, training_data: {container: ..}}]"),
                  "training_data.container"),
        _manifest("results-dotdot", "path", _with(data_stores="[{id: s, training_results: {container: r/../../x}}]"),
                  "training_results.container"),
    ]
    return cases


def odd_yaml_manifests() -> list[ManifestCase]:
    """YAML that is valid or nearly so but is not a manifest, or uses dangerous tags."""
    return [
        _manifest("python-object-tag", "tag", _with(name="!!python/object/apply:os.system ['touch /tmp/pwned']"),
                  "name"),
        _manifest("python-name-tag", "tag", _with(framework="!!python/name:os.system"), "framework"),
        _manifest("binary-tag", "tag", _with(name="!!binary '@@@not base64'"), "name"),
        _manifest("custom-tag", "tag", _with(gpus="!gpu 1"), "gpus"),
        _manifest("tabs", "syntax", "name: corpus\nframework:\n\tname: custom\n", "yaml"),
        _manifest("only-comment", "syntax", "# nothing here\n", "manifest"),
        _manifest("only-whitespace", "syntax", "   \n\n  \n", "manifest"),
        _manifest("document-marker", "syntax", "---\n...\n", "manifest"),
        _manifest("json-array", "syntax", '["name", "corpus"]', "manifest"),
        _manifest("scalar", "syntax", "just a string", "manifest"),
        _manifest("unclosed-quote", "syntax", 'name: "corpus\nframework: {name: custom}\n', "yaml"),
        _manifest("bad-indent", "syntax", "name: corpus\n  framework: x\n y: z\n", "yaml"),
        _manifest("empty-file", "syntax", b"", "manifest"),
    ]


def manifest_cases() -> list[ManifestCase]:
    """Every bad manifest."""
    return (bad_manifest_files() + huge_manifests() + non_utf8_manifests() + yaml_bombs() + deep_manifests()
            + wrong_type_manifests() + search_manifests() + odd_yaml_manifests())


# ---- sweep flags --------------------------------------------------------------------------

#: Bad ``--sweep`` flags: (id, flag).
SWEEPS = [
    ("empty", ""), ("equals", "="), ("no-spec", "lr"), ("no-value", "lr="), ("no-name", "=1"),
    ("digit-name", "1lr=[1,2]"), ("dash-name", "learning-rate=[1,2]"), ("space-name", "a b=1"),
    ("unicode-name", "λ=[1,2]"), ("dollar-name", "${lr}=[1,2]"),
    ("unknown-distribution", "lr=normal(0,1)"), ("typo-distribution", "lr=loguniformm(1e-4,1e-1)"),
    ("uniform-one-arg", "lr=uniform(1)"), ("uniform-three-args", "lr=uniform(1,2,3)"),
    ("uniform-reversed", "lr=uniform(2,1)"), ("uniform-equal", "lr=uniform(1,1)"),
    ("uniform-words", "lr=uniform(a,b)"), ("uniform-nan", "lr=uniform(nan,1)"), ("uniform-inf", "lr=uniform(0,inf)"),
    ("uniform-overflow", "lr=uniform(0,1e999)"), ("loguniform-zero", "lr=loguniform(0,1)"),
    ("loguniform-negative", "lr=loguniform(-1,1)"), ("int-fraction", "n=int(0.5,2)"),
    ("int-step-zero", "n=int(1,10,0)"), ("int-step-negative", "n=int(1,10,-1)"),
    ("quniform-negative-step", "x=quniform(0,1,-0.1)"),
    ("quniform-no-step", "x=quniform(0,1)"), ("quniform-overflow", "x=quniform(0,1e300,1e-300)"),
    ("empty-list", "lr=[]"),
    ("empty-choice", "lr=choice()"), ("nested-list", "lr=[[1,2]]"), ("nested-call", "lr=uniform(uniform(0,1),2)"),
    ("unclosed-call", "lr=uniform(1,2"), ("unclosed-list", "lr=[1,2"), ("trailing-garbage", "lr=uniform(1,2)x"),
    ("shell-substitution", "lr=$(rm -rf /)"), ("choice-inf", "lr=[1,inf]"), ("choice-nan", "lr=choice(nan)"),
    ("huge-number", "lr=uniform(0," + "9" * 5000 + ")"), ("long-flag", "lr=[" + ",".join(["1"] * 50_000) + "]x"),
    ("nul-in-name", "l\x00r=[1]"), ("newline-in-spec", "lr=uniform(\n"),
]


def sweep_cases() -> list[SweepCase]:
    """Every bad sweep flag, plus sweeps that are fine alone but not with the search."""
    cases = [SweepCase(f"sweep-{case_id}", "sweep", ("--sweep",), flag) for case_id, flag in SWEEPS]
    grid = GOOD_MANIFEST + "search: {algorithm: grid}\n"
    cases += [
        SweepCase("sweep-grid-continuous", "sweep", ("grid",), "lr=uniform(0,1)", manifest=grid),
        SweepCase("sweep-grid-too-big", "sweep", ("grid",), "a=int(1,100)", manifest=grid + "hyperparameters:\n"
                  "  b: {int: [1, 100]}\n"),
        SweepCase("sweep-grid-runs-too-few", "sweep", ("grid",), "a=[1,2,3]", runs=2, manifest=grid),
        SweepCase("sweep-grid-int-overflow", "sweep", ("grid",), "n=int(0,100000000000000000000000)", manifest=grid),
    ]
    return cases


# ---- code zips ----------------------------------------------------------------------------

def _zip(*entries: tuple[str, bytes], symlink: str = "") -> bytes:
    """A zip of ``entries`` (name, content); ``symlink``: a name stored as a symbolic link to ``/etc``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("train.py", b"print('hi')\n")
        for name, content in entries:
            zf.writestr(name, content)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            info.create_system = 3
            zf.writestr(info, "/etc")
    return buffer.getvalue()


def _patched(data: bytes, offset_in_header: int, fmt: str, value: int, central: bool = True) -> bytes:
    """``data`` with one field of the last central-directory (or first local) header replaced."""
    signature = b"PK\x01\x02" if central else b"PK\x03\x04"
    at = (data.rfind if central else data.find)(signature) + offset_in_header
    return data[:at] + struct.pack(fmt, value) + data[at + struct.calcsize(fmt):]


@functools.lru_cache(maxsize=1)
def zip_bomb() -> bytes:
    """A real bomb: a few hundred kilobytes that unpack to over a gibibyte."""
    chunk = bytes(16 << 20)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for index in range(65):
            zf.writestr(f"zeros-{index:02d}.bin", chunk)
    return buffer.getvalue()


@functools.lru_cache(maxsize=1)
def oversized_zip() -> bytes:
    """A zip over the 64 MiB limit (stored, so it is quick to make)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("weights.bin", bytes(MAX_CODE_BYTES + 1024))
    return buffer.getvalue()


def zip_cases() -> list[ZipCase]:
    """Zip-slip, symlinks, bombs, corrupt and non-zip archives."""
    good = _zip()
    crc_flipped = bytearray(good)
    crc_flipped[good.find(b"PK\x03\x04") + 30 + len("train.py") + 2] ^= 0xFF  # corrupt the compressed data
    raw = {
        "slip-parent": _zip(("../evil.py", b"x")),
        "slip-nested-parent": _zip(("a/../../evil.py", b"x")),
        "slip-absolute": _zip(("/etc/evil", b"x")),
        "slip-backslash": _zip(("..\\evil.py", b"x")),
        "slip-deep": _zip(("a/b/c/../../../../evil.py", b"x")),
        "symlink-entry": _zip(symlink="etc-link"),
        "symlink-nested": _zip(symlink="data/link"),
        "bomb-declared-size": _patched(good, 24, "<I", 0xFFFFFFFF),
        "bomb-real": zip_bomb(),
        "encrypted-flag": _patched(_patched(good, 8, "<H", 1), 6, "<H", 1, central=False),
        "unknown-compression": _patched(_patched(good, 10, "<H", 99), 8, "<H", 99, central=False),
        "bad-crc": bytes(crc_flipped),
        "truncated": good[: len(good) // 2],
        "garbage-after-header": b"PK\x03\x04" + bytes(200),
        "empty-file": b"",
        "text-file": b"print('not a zip')\n",
        "oversized": oversized_zip(),
    }
    return [ZipCase(f"zip-{name}", "zip", ("code",), data) for name, data in raw.items()]


# ---- raw REST requests --------------------------------------------------------------------

def _good_body(**override: Any) -> dict:
    """A valid ``POST /v1/experiments`` body with some fields replaced."""
    body = {"manifest": GOOD_MANIFEST, "code_zip_b64": base64.b64encode(_zip()).decode()}
    body.update(override)
    return body


#: Bodies of ``POST /v1/experiments`` that are wrong: (id, body, field the message names).
EXPERIMENT_BODIES = [
    ("list", [1, 2], "body"), ("string", "manifest", "body"), ("null", None, "body"), ("number", 7, "body"),
    ("empty-object", {}, "manifest"), ("no-manifest", {"code_zip_b64": "UEs="}, "manifest"),
    ("no-code", {"manifest": GOOD_MANIFEST}, "code_zip_b64"),
    ("manifest-number", _good_body(manifest=123), "manifest"), ("manifest-null", _good_body(manifest=None), "manifest"),
    ("manifest-list", _good_body(manifest=["name: x"]), "manifest"),
    ("manifest-surrogate", _good_body(manifest=GOOD_MANIFEST + "description: \ud800\n"), "manifest"),
    ("manifest-huge", _good_body(manifest="a: " + "b" * (1 << 20) + "\n"), "manifest"),
    ("code-number", _good_body(code_zip_b64=5), "code_zip_b64"),
    ("code-garbage", _good_body(code_zip_b64="!!!not base64!!!"), "code"),
    ("code-bad-padding", _good_body(code_zip_b64="abc"), "code"), ("code-empty", _good_body(code_zip_b64=""), "code"),
    ("code-unicode", _good_body(code_zip_b64="é" * 8), "code"),
    ("code-newlines", _good_body(code_zip_b64="UEsF\nBgAA\n"), "code"),
    ("sweep-string", _good_body(sweep="lr=[1,2]"), "sweep"), ("sweep-numbers", _good_body(sweep=[1, 2]), "sweep"),
    ("sweep-null-item", _good_body(sweep=[None]), "sweep"),
    ("runs-negative", _good_body(runs=-1), "runs"), ("runs-zero", _good_body(runs=0), "runs"),
    ("runs-too-many", _good_body(runs=1001), "runs"), ("runs-huge", _good_body(runs=10**30), "runs"),
    ("runs-string", _good_body(runs="five"), "runs"), ("runs-fraction", _good_body(runs=1.5), "runs"),
    ("env-list", _good_body(env=["A=1"]), "env"), ("env-number-value", _good_body(env={"A": 1}), "env"),
    ("unknown-field", _good_body(colour="blue"), "colour"), ("unknown-nested", _good_body(options={"gpus": 1}),
                                                              "options"),
    ("name-newline", _good_body(manifest_name="a\nb.yml", manifest="x"), "manifest_name"),
    ("name-huge", _good_body(manifest_name="m" * 5000, manifest="x"), "manifest_name"),
]

#: Requests of other routes with wrong ids, parameters or bodies: (id, method, path, json, mentions).
OTHER_REQUESTS = [
    ("exp-dotdot-encoded", "GET", "/v1/experiments/..%2F..%2Fetc", None, ()),
    ("exp-dotdot-dots", "GET", "/v1/experiments/%2e%2e", None, ("..",)),
    ("exp-backslash", "GET", "/v1/experiments/..%5Cx", None, ()),
    ("exp-nul", "GET", "/v1/experiments/a%00b", None, ()),
    ("exp-long-id", "GET", "/v1/experiments/" + "x" * 10_000, None, ()),
    ("exp-cancel-dotdot", "POST", "/v1/experiments/%2e%2e/cancel", None, ()),
    ("run-dotdot", "GET", "/v1/runs/%2e%2e", None, ()),
    ("run-dotdot-slash", "GET", "/v1/runs/..%2Fx", None, ()),
    ("run-cancel-absolute", "POST", "/v1/runs/%2Fetc%2Fpasswd/cancel", None, ()),
    ("run-rerun-missing", "POST", "/v1/runs/abc-01/rerun", None, ("abc-01",)),
    ("run-logs-negative", "GET", "/v1/runs/abc-01/logs?offset=-1", None, ("offset",)),
    ("run-logs-words", "GET", "/v1/runs/abc-01/logs?offset=abc", None, ("offset",)),
    ("run-logs-learner-zero", "GET", "/v1/runs/abc-01/logs?learner=0", None, ("learner",)),
    ("run-logs-huge", "GET", "/v1/runs/abc-01/logs?offset=" + "9" * 40, None, ("offset",)),
    ("run-metrics-since", "GET", "/v1/runs/abc-01/metrics?since=-2", None, ("since",)),
    ("runs-bad-state", "GET", "/v1/runs?state=bogus", None, ("state",)),
    ("runs-missing-experiment", "GET", "/v1/runs?experiment=..%2Fx", None, ("../x",)),
    ("unknown-route", "GET", "/v1/nothing", None, ("/v1/nothing",)),
    ("unknown-long-route", "GET", "/v1/" + "y" * 10_000, None, ("no such route",)),
    ("wrong-method", "DELETE", "/v1/experiments", None, ()),
    ("account-bad-name", "POST", "/v1/accounts", {"name": "../x", "gpus": 1}, ("name",)),
    ("account-empty-name", "POST", "/v1/accounts", {"name": "", "gpus": 1}, ("name",)),
    ("account-long-name", "POST", "/v1/accounts", {"name": "a" * 100, "gpus": 1}, ("name",)),
    ("account-negative-gpus", "POST", "/v1/accounts", {"name": "bob", "gpus": -1}, ("gpus",)),
    ("account-huge-gpus", "POST", "/v1/accounts", {"name": "bob", "gpus": 10**12}, ("gpus",)),
    ("account-gpus-string", "POST", "/v1/accounts", {"name": "bob", "gpus": "two"}, ("gpus",)),
    ("account-unknown-field", "POST", "/v1/accounts", {"name": "bob", "gpus": 1, "admin": True}, ("admin",)),
    ("account-exists", "POST", "/v1/accounts", {"name": "local", "gpus": 1}, ("local",)),
]


def request_cases() -> list[RequestCase]:
    """Raw requests: wrong bodies, wrong ids, wrong parameters, malformed bytes, bad tokens."""
    cases = [RequestCase(f"api-body-{case_id}", "api-body", (where,), json=body)
             for case_id, body, where in EXPERIMENT_BODIES]
    cases += [RequestCase(f"api-{case_id}", "api-route", mentions, method=method, path=path, json=body)
              for case_id, method, path, body, mentions in OTHER_REQUESTS]
    raw = {"not-json": b"name: corpus", "truncated-json": b'{"manifest": "x', "nan": b'{"manifest": NaN}',
           "deep-json": b"[" * 100_000 + b"]" * 100_000, "latin1-json": '{"manifest": "caf\xe9"}'.encode("latin-1"),
           "bom-garbage": b"\xef\xbb\xbf\xff"}
    cases += [RequestCase(f"api-raw-{case_id}", "api-raw", (), content=content,
                          headers={"Content-Type": "application/json"}) for case_id, content in raw.items()]
    cases += [
        RequestCase("api-form-body", "api-raw", (), content=b"manifest=x", headers={
            "Content-Type": "application/x-www-form-urlencoded"}),
        RequestCase("api-no-token", "auth", ("token",), method="GET", path="/v1/experiments", auth=False),
        RequestCase("api-wrong-token", "auth", ("token",), method="GET", path="/v1/experiments", auth=False,
                    headers={"Authorization": "Bearer not-a-token"}),
        RequestCase("api-empty-bearer", "auth", (), method="GET", path="/v1/runs", auth=False,
                    headers={"Authorization": "Bearer"}),
        RequestCase("api-basic-auth", "auth", (), method="GET", path="/v1/usage", auth=False,
                    headers={"Authorization": "Basic YWRtaW46YWRtaW4="}),
        RequestCase("api-token-on-submit", "auth", ("token",), json=_good_body(), auth=False),
    ]
    return cases


# ---- command lines ------------------------------------------------------------------------

@dataclass(frozen=True)
class Paths:
    """Files the command-line cases name: a good manifest and model, and awkward paths."""

    manifest: Path
    model: Path
    tmp: Path

    @classmethod
    def make(cls, tmp: Path) -> "Paths":
        """Write the good definition and the awkward files under ``tmp``."""
        model = tmp / "model"
        model.mkdir(parents=True, exist_ok=True)
        (model / "train.py").write_text("print('hi')\n")
        manifest = tmp / "manifest.yml"
        manifest.write_text(GOOD_MANIFEST)
        (tmp / "text.txt").write_text("not a zip\n")
        (tmp / "empty.zip").write_bytes(b"")
        (tmp / "a-dir").mkdir(exist_ok=True)
        dangling = tmp / "dangling-model"
        dangling.mkdir(exist_ok=True)
        (dangling / "train.py").write_text("print('hi')\n")
        if not (dangling / "gone").is_symlink():
            (dangling / "gone").symlink_to(tmp / "nowhere")
        fifo = tmp / "fifo-model"
        fifo.mkdir(exist_ok=True)
        if not (fifo / "pipe").exists():
            os.mkfifo(fifo / "pipe")
        return cls(manifest, model, tmp)

    def fill(self, words: tuple[str, ...]) -> list[str]:
        """``words`` with ``{manifest}``, ``{model}`` and ``{tmp}`` replaced."""
        return [w.format(manifest=self.manifest, model=self.model, tmp=self.tmp) for w in words]


def _argv(case_id: str, words: str, *mentions: str, magic: Optional[str] = None) -> ArgvCase:
    return ArgvCase(f"cli-{case_id}", "argv", mentions, tuple(words.split("\x1f")) if words else (), magic)


#: Command lines (words separated by \x1f so that paths and flags may hold spaces).
ARGV = [
    _argv("train-missing-manifest", "train\x1f{tmp}/absent.yml", "absent.yml", magic="train {tmp}/absent.yml"),
    _argv("train-manifest-is-dir", "train\x1f{tmp}/a-dir", "a-dir", magic="train {tmp}/a-dir"),
    _argv("train-missing-model", "train\x1f{manifest}\x1f{tmp}/absent-model", "absent-model",
          magic="train {manifest} {tmp}/absent-model"),
    _argv("train-model-not-zip", "train\x1f{manifest}\x1f{tmp}/text.txt", "text.txt",
          magic="train {manifest} {tmp}/text.txt"),
    _argv("train-model-empty-zip", "train\x1f{manifest}\x1f{tmp}/empty.zip", "empty.zip",
          magic="train {manifest} {tmp}/empty.zip"),
    _argv("train-model-dangling-link", "train\x1f{manifest}\x1f{tmp}/dangling-model", "gone",
          magic="train {manifest} {tmp}/dangling-model"),
    _argv("train-model-with-fifo", "train\x1f{manifest}\x1f{tmp}/fifo-model", "pipe",
          magic="train {manifest} {tmp}/fifo-model"),
    _argv("train-runs-zero", "train\x1f{manifest}\x1f{model}\x1f--runs\x1f0", "runs",
          magic="train {manifest} {model} --runs 0"),
    _argv("train-runs-negative", "train\x1f{manifest}\x1f{model}\x1f--runs=-5", "runs",
          magic="train {manifest} {model} --runs=-5"),
    _argv("train-runs-huge", "train\x1f{manifest}\x1f{model}\x1f--runs\x1f99999", "runs",
          magic="train {manifest} {model} --runs 99999"),
    _argv("train-runs-word", "train\x1f{manifest}\x1f{model}\x1f--runs\x1fmany", "--runs",
          magic="train {manifest} {model} --runs many"),
    _argv("train-unknown-flag", "train\x1f{manifest}\x1f--gpu\x1f1", "--gpu", magic="train {manifest} --gpu 1"),
    _argv("upload-missing-path", "upload\x1f{tmp}/absent-data\x1fdata", "absent-data",
          magic="upload {tmp}/absent-data data"),
    _argv("upload-bucket-dotdot", "upload\x1f{model}\x1f..", "..", magic="upload {model} .."),
    _argv("upload-bucket-empty", "upload\x1f{model}\x1f", "bucket", magic="upload {model} ''"),
    _argv("upload-bucket-absolute", "upload\x1f{model}\x1f/etc", "/etc", magic="upload {model} /etc"),
    _argv("upload-prefix-dotdot", "upload\x1f{model}\x1fdata/../../x", "..", magic="upload {model} data/../../x"),
    _argv("upload-bucket-hidden", "upload\x1f{model}\x1f.hidden", ".hidden", magic="upload {model} .hidden"),
    _argv("download-missing-run", "download\x1fabc-01\x1f{tmp}/dl", "abc-01", magic="download abc-01 {tmp}/dl"),
    _argv("download-dotdot-run", "download\x1f../x\x1f{tmp}/dl", "../x", magic="download ../x {tmp}/dl"),
    _argv("download-dest-is-file", "download\x1fabc-01\x1f{tmp}/text.txt", "text.txt",
          magic="download abc-01 {tmp}/text.txt"),
    _argv("show-dotdot", "show\x1f../x", "../x", magic="show ../x"),
    _argv("show-encoded-dotdot", "show\x1f%2e%2e", "%2e%2e", magic="show %2e%2e"),
    _argv("show-absolute", "show\x1f/etc/passwd", "/etc/passwd", magic="show /etc/passwd"),
    _argv("logs-dotdot", "logs\x1f../x-01", "../x-01", magic="logs ../x-01"),
    _argv("logs-learner-zero", "logs\x1fabc-01\x1f--learner\x1f0", "learner", magic="logs abc-01 --learner 0"),
    _argv("metrics-empty-id", "metrics\x1f", "run", magic=None),
    _argv("cancel-dotdot", "cancel\x1f../x", "../x", magic="cancel ../x"),
    _argv("cancel-query", "cancel\x1fx?state=QUEUED", "x?state=QUEUED", magic="cancel x?state=QUEUED"),
    _argv("list-bad-state", "list\x1f--state\x1fbogus", "bogus", magic="list --state bogus"),
    _argv("list-missing-experiment", "list\x1f--experiment\x1f../x", "../x", magic="list ../x"),
    _argv("accounts-bad-name", "accounts\x1fcreate\x1fBad Name\x1f--gpus\x1f1", "name"),
    _argv("accounts-negative-gpus", "accounts\x1fcreate\x1fbob\x1f--gpus=-1", "gpus"),
    _argv("accounts-gpus-word", "accounts\x1fcreate\x1fbob\x1f--gpus\x1ftwo", "--gpus"),
    _argv("accounts-exists", "accounts\x1fcreate\x1flocal\x1f--gpus\x1f1", "local"),
    _argv("unknown-command", "trian\x1f{manifest}", "trian", magic="trian {manifest}"),
    _argv("backend-port-out-of-range", "backend\x1fstart\x1f--port\x1f99999", "--port"),
    _argv("backend-port-word", "backend\x1fstatus\x1f--port\x1fhttp", "--port"),
    _argv("validate-dir", "validate\x1f{tmp}/a-dir", "a-dir"),
    _argv("validate-missing", "validate\x1f{tmp}/absent.yml", "absent.yml"),
    _argv("no-command", "", "command"),
]


def argv_cases() -> list[ArgvCase]:
    """Every bad command line."""
    return list(ARGV)


# ---- %%wml train flags --------------------------------------------------------------------

@dataclass(frozen=True)
class CellCase(Case):
    """``%%wml train FLAGS`` over a small valid cell (the magics only)."""

    flags: str = ""
    cell: str = "print(1)\n"


#: Bad ``%%wml train`` flags or cells: (id, flags, cell or None, what the message names).
CELLS = [
    ("name-dotdot", "--name ../x", None, "name"), ("name-control", "--name $'a\\tb'", None, "name"),
    ("name-long", "--name " + "n" * 300, None, "name"), ("framework-empty", "--framework ''", None, "framework"),
    ("gpus-negative", "--gpus=-1", None, "gpus"), ("gpus-word", "--gpus two", None, "--gpus"),
    ("cpus-zero", "--cpus 0", None, "cpus"), ("cpus-nan", "--cpus nan", None, "cpus"),
    ("memory-word", "--memory lots", None, "memory"), ("learners-zero", "--learners 0", None, "learners"),
    ("runs-zero", "--runs 0", None, "runs"), ("runs-huge", "--runs 100000", None, "runs"),
    ("data-dotdot", "--data ../x", None, "data"), ("data-missing-bucket", "--data no-such-bucket", None,
                                                    "no-such-bucket"),
    ("include-missing", "--include /no/such/file.py", None, "/no/such/file.py"),
    ("early-stop-no-metric", "--early-stop asha", None, "metric"),
    ("tpe-no-metric", "--search tpe", None, "metric"), ("unknown-flag", "--colour blue", None, "--colour"),
    ("unbalanced-quote", "--name 'x", None, "quotation"),
    ("syntax-error", "", "def f(:\n", "line"), ("undefined-name", "", "model = build()\n", "build"),
    ("shell-escape", "", "!rm -rf /\n", "line"), ("nul-in-cell", "", "x = 1\x00\n", "line"),
]


def cell_cases() -> list[CellCase]:
    """Every bad ``%%wml train`` cell."""
    return [CellCase(f"cell-{case_id}", "cell", (mention,), flags, cell or "print(1)\n")
            for case_id, flags, cell, mention in CELLS]


# ---- everything ---------------------------------------------------------------------------

def all_cases() -> list[Case]:
    """The whole corpus (zip bombs are built once and cached)."""
    return manifest_cases() + sweep_cases() + zip_cases() + request_cases() + argv_cases() + cell_cases()
