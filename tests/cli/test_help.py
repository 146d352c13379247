"""What ``--help`` tells a new user: every subcommand says what it does, and every option
says what it does and what it takes when not given, in one form, ``(default: ...)``."""

from __future__ import annotations

import argparse
import re

import pytest

import pyro_gen
from pyro_gen.cli import main
from pyro_gen.cli_models import MODELS
from pyro_gen.cli_parser import build_parser
from pyro_gen.cli_settings import OPTION_DEFAULTS, TRAINING_DEFAULTS, flag
from pyro_gen.data.__main__ import main as data_main
from tests.reliability.run_fixtures import cli


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


SUBCOMMANDS = _subcommands()


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_every_subcommand_describes_itself(name):
    # `sample --help` and `convert-checkpoint --help` showed only their usage and options
    assert SUBCOMMANDS[name].description, f"pyro-gen {name} --help has no description"


def _options(name: str) -> list[argparse.Action]:
    return [
        a
        for a in SUBCOMMANDS[name]._actions
        # flags (--help, --debug) take no value, and a required option has no default
        if a.option_strings and a.nargs != 0 and not a.required
    ]


@pytest.mark.parametrize(
    "name, action",
    [(name, a) for name in sorted(SUBCOMMANDS) for a in _options(name)],
    ids=lambda v: v if isinstance(v, str) else v.option_strings[-1],
)
def test_every_option_says_its_default_in_one_form(name, action):
    # `sample --steps` said no default at all; evaluate, sample and impute wrote
    # "(default 1000)" beside train's "(default: 3)"
    assert action.help and "(default: " in action.help, (name, action.option_strings, action.help)
    assert not re.search(r"\(default [^:]", action.help), action.help
    default = action.default
    if default is argparse.SUPPRESS:  # a recorded setting: its default is in the tables
        default = {**TRAINING_DEFAULTS, **OPTION_DEFAULTS}[action.dest]
        assert action.option_strings[-1] == flag(action.dest)
    if default not in (None, []):
        assert f"(default: {default}" in action.help, (action.help, default)


def test_the_flags_shared_by_subcommands_read_the_same():
    # one help text per shared option, so that a user reads one meaning for one name
    helps: dict[str, set[str]] = {}
    for name in SUBCOMMANDS:
        for action in SUBCOMMANDS[name]._actions:
            if action.option_strings and action.dest in ("device", "no_progress", "debug"):
                helps.setdefault(action.dest, set()).add(action.help)
    assert all(len(texts) == 1 for texts in helps.values()), helps


def test_sample_counts_its_samples_in_words(tmp_path, capsys):
    # "1 samples written to ..."
    run = tmp_path / "flow"
    args = ["--toy-samples", "256", "--epochs", "1", "--no-progress", "--no-compile"]
    status, _, err = cli(capsys, "train", "realnvp", "--data", "moons", *args, "--out", run)
    assert status == 0, err
    status, out, err = cli(capsys, "sample", run, "-n", "1")
    assert status == 0 and out.startswith("1 sample written to "), (out, err)
    status, out, err = cli(capsys, "sample", run, "-n", "2")
    assert status == 0 and out.startswith("2 samples written to "), (out, err)


def test_the_data_command_help_is_plain_text(capsys):
    # `python -m pyro_gen.data --help` printed its module docstring: ``rebuild``,
    # :class:`~pyro_gen.data.errors.CorruptCacheError` and a positional without a word
    for argv in (["--help"], ["rebuild", "--help"]):
        with pytest.raises(SystemExit):
            data_main(argv)
        text = capsys.readouterr().out
        assert "``" not in text and ":class:" not in text and ":func:" not in text, text
    assert re.search(r"\{fashion_mnist,mnist\}\s+\S", text), text  # the name is explained


def test_version_is_printed(capsys):
    # `pyro-gen --version` answered "the following arguments are required: command"
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"pyro-gen {pyro_gen.__version__}\n"


def test_every_model_option_names_the_models_it_applies_to():
    # "hidden-dim: also others" left a user to guess: flows and the DDPM refuse it
    train = SUBCOMMANDS["train"]
    for group in train._action_groups:
        for action in group._group_actions:
            users = {m for m, spec in MODELS.items() if action.dest in spec.options}
            words = set(re.findall(r"[a-z]+", f"{group.title} {action.help}"))
            assert users <= words, (action.option_strings, sorted(users - words), group.title)
