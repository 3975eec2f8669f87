"""Reading FfDL and Watson ML manifests: conformance, field mapping, and every problem at its line.

Each file in manifests/bad/ starts with one ``# expect: LINE: FIELD`` comment per problem it
must produce (exactly those); manifests/good/ must load.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from pathlib import Path

import pytest
from wml_core.definition import Definition
from wml_core.errors import InvalidInput
from wml_core.manifest import (
    ManifestError,
    Problem,
    load_manifest,
    load_manifest_file,
    manifest_format,
    parse_duration,
    parse_memory,
)

HERE = Path(__file__).parent
GOOD = HERE / "manifests" / "good"
BAD = sorted((HERE / "manifests" / "bad").glob("*.yml"))
#: Fake credentials: tests assert these never appear in a message.
ENV = {"WML_TEST_ENDPOINT": "http://127.0.0.1:9000", "WML_TEST_KEY": "AKIAEXAMPLEKEY0001",
       "WML_TEST_SECRET": "s3cr3t-Value-0001", "WML_TEST_DIR": "/srv"}
EXPECT = re.compile(rb"# expect: (\d+): (\S+)")


def _conformance_dir() -> Path | None:
    """FfDL's published manifests: shared/ in the checkout, or beside it."""
    for root in (HERE.parent / "shared", HERE.parent.parent / "shared"):
        folder = root / "conformance" / "ffdl-manifests"
        if folder.is_dir():
            return folder
    return None


CONFORMANCE = _conformance_dir()
FFDL_MANIFESTS = sorted(CONFORMANCE.glob("*.yml")) if CONFORMANCE else []


def expected(path: Path) -> list[tuple[int, str]]:
    """The ``# expect:`` comments at the top of a bad manifest."""
    return [(int(m.group(1)), m.group(2).decode()) for m in EXPECT.finditer(path.read_bytes())]


def problems_of(path: Path) -> ManifestError:
    with pytest.raises(ManifestError) as info:
        load_manifest_file(path, env=ENV)
    return info.value


# ---- FfDL conformance -----------------------------------------------------------------------

def test_there_are_all_of_ffdls_manifests():
    assert CONFORMANCE is not None, "shared/conformance/ffdl-manifests must be in or beside the checkout"
    assert len(FFDL_MANIFESTS) >= 23


@pytest.mark.parametrize("path", FFDL_MANIFESTS, ids=lambda p: p.stem)
def test_every_ffdl_manifest_validates_unchanged(path):
    definition = load_manifest_file(path)
    assert definition.format == "ffdl" and manifest_format(path.read_text()) == "ffdl"
    assert definition.name and definition.framework and definition.command
    assert "\n" not in definition.command
    assert definition.data_store.training_data.bucket


def _ffdl(name: str) -> Definition:
    assert CONFORMANCE is not None, "shared/conformance not found"
    return load_manifest_file(CONFORMANCE / name)


def test_ffdl_hostmount_is_a_local_directory():
    store = _ffdl("tf-model__manifest-hostmount.yml").data_store
    assert store.type == "mount_volume" and store.connection.path == "/cosdata"
    assert store.training_data.bucket == "local-dlaas-ci-tf-training-data"


def test_ffdl_crlf_multi_learner_manifest():
    definition = _ffdl("community__FfDL-H2Oai__h2o-model__manifest-h2o.yml")
    assert definition.learners == 2 and definition.framework == "h2o3"
    assert definition.memory_bytes == 2 * 10**9
    assert definition.command.startswith("./h2o3-cluster.sh; if [ \"$LEARNER_ID\" == \"1\" ]")


def test_ffdl_folded_command_becomes_one_line():
    definition = _ffdl("tf-model__manifest.yml")
    assert definition.command.startswith(
        "python3 convolutional_network.py --trainImagesFile ${DATA_DIR}/train-images-idx3-ubyte.gz"
        " --trainLabelsFile ")
    assert definition.command.endswith("--learningRate 0.001 --trainingIters 2000")


def test_ffdl_literal_credentials_and_fractional_cpus():
    definition = _ffdl("caffe-model__manifest.yml")
    assert definition.cpus == 0.5 and definition.memory_bytes == 300 * 2**20
    connection = definition.data_store.connection
    assert connection.endpoint == "http://s3.default.svc.cluster.local"
    assert connection.secret_key.get_secret_value() == "test"
    assert definition.redacted()["data_store"]["connection"]["secret_key"] == "***"


def test_ffdl_framework_nobody_maps_still_validates():
    definition = _ffdl("c10d-mpi-parallelism__manifest.yml")
    assert definition.framework == "pytorchmpi" and definition.framework_version == "0925mpi"


# ---- good manifests: field mapping --------------------------------------------------------------

def test_ffdl_every_field_and_extension():
    d = load_manifest_file(GOOD / "ffdl_sweep.yml", env=ENV)
    assert (d.format, d.name, d.description, d.version) == ("ffdl", "mnist-cnn", "CNN on MNIST",
                                                            "1.10")
    assert (d.gpus, d.gpu_type, d.cpus, d.memory_bytes, d.learners) == (
        1, "nvidia-TeslaV100", 2, 4 * 2**30, 1)
    assert (d.framework, d.framework_version) == ("pytorch", "2.4")
    assert d.command == "python3 train.py --lr ${lr} --data ${DATA_DIR}"  # not substituted
    store = d.data_store
    assert (store.id, store.type) == ("my-store", "mount_cos")
    assert (store.training_data.bucket, store.training_data.prefix) == ("mnist-data", "train")
    assert store.training_results.bucket == "mnist-results"
    assert store.connection.endpoint == ENV["WML_TEST_ENDPOINT"]
    assert store.connection.access_key.get_secret_value() == ENV["WML_TEST_KEY"]
    assert store.connection.secret_key.get_secret_value() == ENV["WML_TEST_SECRET"]
    assert store.connection.region == "us-east-1"
    assert (d.evaluation_metrics.type, d.evaluation_metrics.path) == (
        "tensorboard", "$JOB_STATE_DIR/logs/tb")
    assert d.max_retries == 2


def test_ffdl_hyperparameters_and_search():
    d = load_manifest_file(GOOD / "ffdl_sweep.yml", env=ENV)
    kinds = {name: spec.kind for name, spec in d.hyperparameters.items()}
    assert kinds == {"lr": "loguniform", "batch": "choice", "dropout": "uniform", "layers": "int",
                     "momentum": "quniform", "optimizer": "choice", "seed": "choice"}
    assert list(d.hyperparameters) == ["lr", "batch", "dropout", "layers", "momentum",
                                       "optimizer", "seed"]
    assert d.hyperparameters["seed"].values == [3]
    s = d.search
    assert (s.algorithm, s.runs, s.metric, s.mode, s.seed) == ("random", 20, "val_acc", "max", 7)
    assert (s.early_stopping.type, s.early_stopping.min_steps,
            s.early_stopping.reduction_factor) == ("asha", 1, 3)


def test_credentials_are_never_in_the_redacted_definition():
    d = load_manifest_file(GOOD / "ffdl_sweep.yml", env=ENV)
    text = str(d.redacted()) + repr(d)
    assert ENV["WML_TEST_SECRET"] not in text and ENV["WML_TEST_KEY"] not in text


def test_wml_manifest_maps_onto_the_same_model():
    d = load_manifest_file(GOOD / "wml.yml", env=ENV)
    assert (d.format, d.name, d.framework, d.framework_version) == (
        "wml", "tf-mnist", "tensorflow", "1.5")
    assert d.command == ("python3 convolutional_network.py "
                         "--trainImagesFile ${DATA_DIR}/train-images-idx3-ubyte.gz")
    assert (d.gpus, d.cpus, d.memory_bytes, d.gpu_type, d.learners) == (
        2, 8, 48 * 10**9, "nvidia-TeslaK80", 2)
    store = d.data_store
    assert store.training_data.bucket == "mnist-training-data"
    assert (store.training_results.bucket, store.training_results.prefix) == (
        "mnist-training-results", "run1")
    assert store.connection.endpoint == "https://s3.example.com"
    assert store.connection.secret_key.get_secret_value() == ENV["WML_TEST_SECRET"]
    assert (d.search.algorithm, d.search.runs) == ("grid", 6)
    assert manifest_format((GOOD / "wml.yml").read_text()) == "wml"


def test_wml_tshirt_size():
    d = load_manifest_file(GOOD / "wml_small.yml")
    assert (d.gpus, d.cpus, d.memory_bytes, d.gpu_type) == (1, 6, 12 * 10**9, None)
    assert d.data_store is None


def test_magic_manifest_uses_the_default_store_and_bare_megabytes():
    d = load_manifest_file(GOOD / "magic.yml")
    assert d.memory_bytes == 512 * 10**6 and d.gpus == 0 and d.cpus == 1
    assert d.data_store.connection is None and d.data_store.training_data.bucket == "digits"
    assert d.hyperparameters == {} and d.search.algorithm == "random"


def test_env_references_default_to_os_environ(monkeypatch):
    monkeypatch.setenv("WML_TEST_DIR", "/data")
    d = load_manifest_file(GOOD / "hostmount_env.yml")
    assert d.data_store.connection.path == "/data/cosdata"
    monkeypatch.delenv("WML_TEST_DIR")
    with pytest.raises(ManifestError, match="environment variable WML_TEST_DIR is not set"):
        load_manifest_file(GOOD / "hostmount_env.yml")


# ---- bad manifests ------------------------------------------------------------------------

@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_bad_manifest_reports_each_problem_at_its_line(path):
    error = problems_of(path)
    assert sorted((p.line, p.field) for p in error.problems) == sorted(expected(path))
    assert str(error).splitlines() == [str(p) for p in error.problems]
    for problem in error.problems:
        assert str(problem).startswith(f"{path}:{problem.line}: {problem.field}: ")
        assert problem.message and "\n" not in problem.message
    assert ENV["WML_TEST_SECRET"] not in str(error) and ENV["WML_TEST_KEY"] not in str(error)


def test_there_are_enough_single_problem_manifests():
    single = [path for path in BAD if len(expected(path)) == 1]
    assert len(single) >= 35 and len(BAD) - len(single) >= 3


def test_manifest_error_is_invalid_input_and_lists_problems_in_line_order():
    error = problems_of(HERE / "manifests" / "bad" / "multi_ffdl.yml")
    assert isinstance(error, InvalidInput)
    assert [p.line for p in error.problems] == sorted(p.line for p in error.problems)
    assert Problem("m.yml", 3, "gpus", "bad").__str__() == "m.yml:3: gpus: bad"


@pytest.mark.parametrize("text, words", [
    ("name: x\ngpu: 1\nframework: {name: a, command: b}\n", "did you mean 'gpus'"),
    ("name: x\nframework: {name: a, command: b}\nsearch: {algorithm: bayes}\n",
     "must be one of grid, random, tpe"),
    ("name: x\nframework: {name: a, command: b}\nhyperparameters: {lr: {logunifrom: [1, 2]}}\n",
     "did you mean 'loguniform'"),
    ("name: x\nname: y\nframework: {name: a, command: b}\n", "first on line 1"),
    ("model_definition: {name: x, framework: {name: a}, execution: {command: b, "
     "compute_configuration: {name: k90}}}\n", "small, medium, large, k80"),
    ("name: x\nframework: {name: a, command: b}\nsearch: {algorithm: grid}\n"
     "hyperparameters: {lr: {uniform: [0, 1]}}\n", "grid search needs finite choices"),
])
def test_messages_say_what_to_do(text, words):
    with pytest.raises(ManifestError, match=re.escape(words)):
        load_manifest(text)


@pytest.mark.parametrize("connection", [
    "{auth_url: x, user_name: AKIAEXAMPLEKEY0001, password: [s3cr3t-Value-0001]}",
    "{auth_url: x, user_name: !!int AKIAEXAMPLEKEY0001, password: s3cr3t-Value-0001}",
    "{auth_url: x, user_name: AKIAEXAMPLEKEY0001, password: s3cr3t-Value-0001, pasword: x}",
])
def test_no_message_contains_a_credential(connection):
    text = (f"name: x\nframework: {{name: a, command: b}}\ngpus: -1\n"
            f"data_stores:\n  - type: mount_cos\n    connection: {connection}\n")
    with pytest.raises(ManifestError) as info:
        load_manifest(text, env={})
    assert len(info.value.problems) == 2
    assert "s3cr3t" not in str(info.value) and "AKIAEXAMPLE" not in str(info.value)


def test_missing_file_is_a_manifest_error(tmp_path):
    with pytest.raises(ManifestError, match="cannot read"):
        load_manifest_file(tmp_path / "nope.yml")


def test_utf8_byte_order_mark_is_fine(tmp_path):
    path = tmp_path / "bom.yml"
    path.write_bytes(b"\xef\xbb\xbfname: bom\nframework: {name: a, command: b}\n")
    assert load_manifest_file(path).name == "bom"


# ---- robustness: bombs, garbage, truncation -------------------------------------------------

def _bomb(levels: int, width: int) -> str:
    lines = ["name: lol", "framework: {name: a, command: b}", "hyperparameters:",
             f"  l0: &l0 [{', '.join(['lol'] * width)}]"]
    lines += [f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


#: libyaml (when PyYAML has it) may refuse deep flow nesting itself, before we count.
DEEP = "nested deeper than 50|maximum nesting depth"


@pytest.mark.parametrize("text, words", [
    (_bomb(levels=9, width=9), "expands to more than"),
    (_bomb(levels=12, width=10), "more than 100 YAML aliases"),
    ("name: deep\nx: " + "[" * 20000 + "]" * 20000 + "\n", DEEP),
    ("name: deep\nx: " + "{a: " * 20000 + "1" + "}" * 20000 + "\n", DEEP),
    ("name: deep\n" + "".join(" " * i + f"k{i}:\n" for i in range(200)), DEEP),
    ("name: big\nl: [" + ",".join(["1"] * 100_000) + "]\n", "more than 10000 values"),
    ("a: &a\n  b: *a\n", "refers to a collection that contains it"),
    ("a: &a\n  <<: *a\n", "refers to a collection that contains it"),
    ("x: " + "y" * 1_000_001 + "\n", "longer than"),
])
def test_hostile_yaml_is_refused_quickly(text, words):
    start = time.perf_counter()
    with pytest.raises(ManifestError, match=words):
        load_manifest(text)
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("text", [
    "!!python/object:os.system {}", "name: !!python/name:os.system\n", "{", ": :", "\t- a",
    "name: x\n\tgpus: 1\n", "%YAML 9.9\n---\na: 1\n", "*undefined\n", "&a a: &a b\n",
    "name: !!binary aGVsbG8=\nframework: {name: a, command: b}\n", "? |\n  x\n: 1\n",
    "name: x\nframework: {name: a, command: b}\nversion: 2020-01-01\ngpus: .inf\ncpus: .nan\n",
    "name: x\nframework: {name: [a], command: {b: 1}}\nhyperparameters: {x: {int: [1, .inf]}}\n",
    "\x00", "\ufeff", "name: x\n---\n", "- - - -\n", "''", "name: x\nframework:\n  - name: a\n",
])
def test_never_a_traceback(text):
    try:
        load_manifest(text)
    except ManifestError as err:
        assert err.problems and all(p.line >= 1 for p in err.problems)


def test_every_truncation_of_a_good_manifest_reads_or_fails_cleanly():
    text = (GOOD / "ffdl_sweep.yml").read_text()
    for end in range(0, len(text), 3):
        with contextlib.suppress(ManifestError):
            load_manifest(text[:end], env=ENV)


# ---- memory sizes -------------------------------------------------------------------------

@pytest.mark.parametrize("value, size", [
    ("4Gb", 4 * 10**9), ("4GB", 4 * 10**9), ("4gb", 4 * 10**9), ("4G", 4 * 10**9),
    ("4GiB", 4 * 2**30), ("4Gi", 4 * 2**30), ("512Mi", 512 * 2**20), ("1000MiB", 1000 * 2**20),
    ("100Mb", 10**8), ("100MB", 10**8), (" 2 GB ", 2 * 10**9), ("1.5Gi", 3 * 2**29),
    (512, 512 * 10**6), ("512", 512 * 10**6), (0.5, 5 * 10**5), ("1Ti", 2**40),
])
def test_parse_memory(value, size):
    assert parse_memory(value) == size


@pytest.mark.parametrize("value", ["lots", "-1Gb", "4Tb?", "", "0", "0Gi", "Gi", "4 Gbytes",
                                   True, None, [1], -5, "1e3Mi"])
def test_parse_memory_rejects(value):
    with pytest.raises(ValueError) as info:
        parse_memory(value)
    assert str(info.value)


@pytest.mark.parametrize("value, seconds", [
    ("90s", 90), ("30m", 1800), ("2h", 7200), ("1h30m", 5400), ("1.5d", 129600), ("2H", 7200), (600, 600),
    ("600", 600), (0.5, 0.5), ("365d", 365 * 86400),
])
def test_parse_duration(value, seconds):
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["2 hours", "h", "", "0", "-5m", "366d", "1h-30m", "inf", "nan", True, None, [1]])
def test_parse_duration_rejects(value):
    with pytest.raises(ValueError) as info:
        parse_duration(value)
    assert str(info.value) and "\n" not in str(info.value)


def test_timeout_is_an_extension_of_both_formats():
    ffdl = load_manifest("name: x\nframework: {name: a, command: b}\ntimeout: 1h30m\n")
    wml = load_manifest("model_definition: {name: x, framework: {name: a}, execution: {command: b}}\ntimeout: 90\n")
    assert (ffdl.timeout_s, wml.timeout_s) == (5400, 90)
    assert load_manifest("name: x\nframework: {name: a, command: b}\n").timeout_s is None


def test_format_of_unreadable_text_is_ffdl():
    assert manifest_format("{") == "ffdl" and manifest_format("model_definition: {}") == "wml"


def test_os_environ_is_not_required_for_literal_credentials(monkeypatch):
    for key in ENV:
        monkeypatch.delenv(key, raising=False)
    assert os.environ.get("WML_TEST_SECRET") is None
    load_manifest_file(GOOD / "magic.yml")
