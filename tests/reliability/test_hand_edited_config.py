"""A ``config.json`` edited by hand with values of the wrong type: every command that reads
the run refuses it in one line naming the file and the setting, as a resume did.

Before, ``sample`` drew images from runs whose ``k`` was null, whose ``missing_rate``
was the string ``"0"`` or whose ``mask_file`` was ``5``, and ``evaluate`` (and
``pyro_gen.load``) took the null ``k``, while ``train`` refused all three.
"""

from __future__ import annotations

import json

import pytest

import pyro_gen
from pyro_gen.runs import RunError
from tests.reliability.run_fixtures import assert_one_line_error, cli, run_files, trained_run

EDITS = {
    "k_null": ("options", "k", None),
    "missing_rate_text": ("options", "missing_rate", "0"),
    "mask_file_number": ("options", "mask_file", 5),
    "likelihood_number": ("options", "likelihood", 3),
    "prior_unknown": ("options", "prior", "vamp2"),
    "lr_text": (None, "lr", "0.001"),
    "seed_fraction": (None, "seed", 1.5),
    "subset_fraction": (None, "subset", 10.5),
    "batch_size_missing": (None, "batch_size", KeyError),
    "eval_every_zero": (None, "eval_every", 0),
}


@pytest.mark.parametrize("edit", EDITS.values(), ids=EDITS.keys())
def test_every_reader_refuses_a_wrongly_typed_setting(tmp_path, capsys, edit):
    section, name, value = edit
    run = trained_run(tmp_path)
    config = json.loads((run / "config.json").read_text())
    where = config[section] if section else config
    if value is KeyError:
        del where[name]
    else:
        where[name] = value
    (run / "config.json").write_text(json.dumps(config))
    before = run_files(run)
    commands = {
        "sample": ["sample", run, "-n", "4", "--out", tmp_path / "s.png"],
        "evaluate": ["evaluate", run, "--num-test", "50"],
        "impute": ["impute", run, "--num-test", "50", "--out", tmp_path / "i.png"],
    }
    for args in commands.values():
        status, _, err = cli(capsys, *args)
        assert_one_line_error(status, err, str(run / "config.json"), name)
    with pytest.raises(RunError, match=name) as info:
        pyro_gen.load(str(run))
    assert "\n" not in str(info.value)
    assert run_files(run) == before and not list(tmp_path.glob("*.png"))
