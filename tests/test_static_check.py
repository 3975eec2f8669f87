"""A cell becomes a definition: undefined names are caught before submission, with their line;
the manifest the flags describe is one the backend reads as meant."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
from wml_core.errors import InvalidInput, WmlError
from wml_core.manifest import load_manifest

from wml_jupyter.cell import (
    TrainOptions,
    check_names,
    code_files,
    definition,
    manifest,
    undefined_names,
)

REPO = Path(__file__).resolve().parents[1]


def test_undefined_name_is_reported_with_its_line():
    source = "from wml_jupyter import run\nhp = run.hparams()\nprint(hp, learning_rate)\n"
    with pytest.raises(InvalidInput) as err:
        check_names(source)
    assert str(err.value) == "line 3: name 'learning_rate' is not defined in this cell"
    assert isinstance(err.value, WmlError)


def test_every_undefined_name_is_listed_in_order():
    source = "a = b\ndef f():\n    return c + a\nprint(d)\n"
    assert undefined_names(source) == [(1, "b"), (3, "c"), (4, "d")]
    with pytest.raises(InvalidInput, match=r"line 1: name 'b' .*also undefined: c \(line 3\), d \(line 4\)"):
        check_names(source)


def test_a_notebook_variable_is_not_captured_and_the_error_says_so():
    with pytest.raises(InvalidInput, match="it is a notebook variable"):
        check_names("print(data)\n", notebook={"data": [1, 2]})


def test_forgetting_the_run_import_gets_a_hint():
    with pytest.raises(InvalidInput, match=r"from wml_jupyter import run"):
        check_names("run.log(step=1, acc=0.5)\n")


def test_scopes_are_understood():
    source = '''
import os, json as js
from pathlib import Path
counter = 0
def train(lr, *args, epochs=3, **kw):
    global total
    total = lr * epochs
    inner = [x * lr for x in range(epochs)]
    def step():
        nonlocal inner
        return inner, counter, total, len(args), kw
    return step()
class Model:
    size = 3
    double = size * 2
    def forward(self):
        return super().forward(), self.size, __class__
for i, (j, k) in enumerate([(1, 2)]):
    pass
with open(os.devnull) as fh:
    pass
try:
    pass
except ValueError as exc:
    print(exc)
if (n := 3):
    print(n, i, j, k, fh, Path, js, __file__, __name__, train, Model, {v: v for v in "ab"}, lambda q: q)
match n:
    case [first, *rest]:
        print(first, rest)
    case {"key": value}:
        print(value)
'''
    assert undefined_names(source) == []


def test_a_real_training_script_passes():
    assert undefined_names((REPO / "examples/digits/train.py").read_text()) == []


def test_a_name_used_only_in_a_nested_scope_is_caught():
    assert undefined_names("def f():\n    return [v * scale for v in range(3)]\n") == [(2, "scale")]
    assert undefined_names("class C:\n    x = default\n") == [(2, "default")]


def test_star_import_turns_the_check_off():
    assert undefined_names("from math import *\nprint(tau, anything)\n") == []


@pytest.mark.parametrize("source", ["%time x = 1\n", "!ls\n", "def f(:\n"])
def test_a_cell_that_is_not_plain_python_is_an_input_error(source):
    with pytest.raises(InvalidInput, match=r"^line \d+: .*plain Python"):
        check_names(source)


def test_manifest_from_flags_reads_back_as_meant():
    opts = TrainOptions(name="digits", gpus=1, cpus=2, memory="1Gi", data="digits/v1",
                        sweep=["lr=loguniform(1e-3,1e-1)", "hidden=[32,64,128]", "layers=int(1,4)",
                               "opt=choice(adam,sgd)", "seed=3"],
                        runs=12, search="random", metric="val_acc", mode="max", early_stop="asha", seed=7)
    d = load_manifest(manifest(opts))
    assert (d.name, d.gpus, d.cpus, d.memory_bytes, d.framework, d.command) == \
        ("digits", 1, 2.0, 2**30, "pytorch", "python3 train.py")
    assert d.data_store.training_data.bucket == "digits" and d.data_store.training_data.prefix == "v1"
    assert d.data_store.connection is None  # the configured default store
    hp = d.hyperparameters
    assert (hp["lr"].kind, hp["lr"].low, hp["lr"].high) == ("loguniform", 1e-3, 1e-1)
    assert hp["hidden"].values == [32, 64, 128] and hp["opt"].values == ["adam", "sgd"]
    assert (hp["layers"].kind, hp["layers"].low, hp["layers"].high) == ("int", 1, 4)
    assert hp["seed"].values == [3]
    s = d.search
    assert (s.algorithm, s.runs, s.metric, s.mode, s.seed, s.early_stopping.type) == \
        ("random", 12, "val_acc", "max", 7, "asha")


def test_no_data_flag_means_no_data_store():
    assert load_manifest(manifest(TrainOptions())).data_store is None


@pytest.mark.parametrize("opts, message", [
    (TrainOptions(sweep=["lr=loguniform(0,1)"]), "loguniform needs low > 0"),
    (TrainOptions(sweep=["lr"]), "expected NAME=SPEC"),
    (TrainOptions(early_stop="asha"), "--early-stop needs --metric"),
])
def test_bad_flags_are_input_errors(opts, message):
    with pytest.raises(InvalidInput, match=message):
        manifest(opts)


def test_included_files_and_directories_travel_with_the_cell(tmp_path):
    (tmp_path / "helpers.py").write_text("SCALE = 2\n")
    (tmp_path / "pkg" / "__pycache__").mkdir(parents=True)
    (tmp_path / "pkg" / "mod.py").write_text("X = 1\n")
    (tmp_path / "pkg" / "__pycache__" / "mod.pyc").write_bytes(b"junk")
    files = code_files("import helpers\n", [str(tmp_path / "helpers.py"), str(tmp_path / "pkg")])
    assert sorted(files) == ["helpers.py", "pkg/mod.py", "train.py"]
    with pytest.raises(InvalidInput, match="no such file"):
        code_files("", [str(tmp_path / "missing.py")])


def test_definition_is_checked_before_anything_is_built():
    with pytest.raises(InvalidInput, match="'undefined_thing'"):
        definition("print(undefined_thing)\n", TrainOptions(sweep=["lr=bad("]))
    text, code = definition("print(1)\n", TrainOptions(name="ok"))
    assert "name: ok" in text
    assert zipfile.ZipFile(io.BytesIO(code)).read("train.py") == b"print(1)\n"


def test_lines_can_be_counted_from_the_magic_line():
    assert undefined_names("x = 1\nprint(y)\n", first_line=2) == [(3, "y")]
    with pytest.raises(InvalidInput, match=r"^line 3: name 'y'"):
        check_names("x = 1\nprint(y)\n", first_line=2)
    with pytest.raises(InvalidInput, match=r"^line 2: "):
        check_names("def f(:\n", first_line=2)
