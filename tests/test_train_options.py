"""The train options are defined once (``wml_core.train_options``): the magic's flags, the CLI's,
``Client.train_code``'s options and the manifest a cell writes all come from that definition."""

from __future__ import annotations

import pytest
import yaml
from wml_core.errors import InvalidInput
from wml_core.manifest import load_manifest
from wml_core.train_options import API, CELL, FILE, OPTIONS, TrainOptions, default_of, options_for, train_options

from wml_jupyter.cell import manifest
from wml_jupyter.cli import build_parser
from wml_jupyter.magics import manual, train_cell, train_file


def _cli_train_args(*argv: str):
    return build_parser().parse_args(["train", "manifest.yml", *argv])


def test_the_magic_and_the_cli_take_the_defined_flags_with_the_defined_defaults():
    cell = vars(train_cell.parser.parse_args([]))
    assert cell == {o.name: default_of(o.name) for o in options_for(CELL)}
    assert cell["gpus"] == 0 and cell["mode"] == "max" and cell["max_retries"] == 0
    line, cli = vars(train_file.parser.parse_args(["m.yml"])), vars(_cli_train_args())
    for option in options_for(FILE):
        assert line[option.name] == cli[option.name] == default_of(option.name)
    assert _cli_train_args("--sweep", "a=[1]", "--sweep", "b=[2]", "--runs", "3", "--wait").sweep == ["a=[1]", "b=[2]"]


def test_the_manual_lists_every_flag_with_its_help():
    text = "".join(manual().split())
    for option in options_for(CELL) + options_for(FILE):
        assert option.flag in text and "".join(option.help.replace("%%", "%").split()) in text, option.name


def test_every_option_has_help_and_a_place():
    for option in OPTIONS:
        assert option.help and option.takes, option.name
    assert {o.name for o in options_for(API)} == set(TrainOptions.__dataclass_fields__)


def test_a_cell_without_flags_writes_only_what_the_manifest_needs():
    data = yaml.safe_load(manifest(TrainOptions()))
    assert data == {"name": "notebook", "framework": {"name": "pytorch", "command": "python3 train.py"},
                    "gpus": 0, "learners": 1, "description": "written by %%wml train"}


def test_a_setting_of_another_option_is_written_only_with_it():
    alone = yaml.safe_load(manifest(TrainOptions(mode="min", min_steps=2)))
    assert "search" not in alone
    both = yaml.safe_load(manifest(TrainOptions(metric="acc", mode="min", early_stop="median", min_steps=2)))
    assert both["search"] == {"metric": "acc", "mode": "min", "early_stopping": {"type": "median", "min_steps": 2}}


def test_a_framework_version_comes_from_the_flag_or_the_option():
    assert yaml.safe_load(manifest(TrainOptions(framework="pytorch:2.4")))["framework"]["version"] == "2.4"
    assert yaml.safe_load(manifest(TrainOptions(framework_version="2.5")))["framework"]["version"] == "2.5"


def test_a_timeout_flag_is_the_manifests_timeout():
    assert load_manifest(manifest(TrainOptions(timeout="1h30m"))).timeout_s == 5400
    assert load_manifest(manifest(TrainOptions())).timeout_s is None


def test_an_unknown_option_names_the_valid_ones():
    with pytest.raises(InvalidInput, match=r"unknown option\(s\) gpu; valid: name, framework"):
        train_options({"gpu": 1})
