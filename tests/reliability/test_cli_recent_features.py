"""Bad input to the command-line features added after test_cli_inputs' sweep: multi-layer
VAEs with the auto guide (``--layers 2 --guide auto``), ``pyro-gen impute``, VAE options
that contradict one another, and the mask file of ``--mask-file``.

Each case must be refused as test_cli_inputs requires (one line on stderr naming what was
wrong, a non-zero exit, no traceback), and is checked against the files themselves: the
trained 2-layer run (``{hvae}``) is byte for byte as it was, a planted symlink's target is
untouched, and a refused fresh run (``{tmp}/fresh``) leaves no folder behind. To add a
fault, add a :class:`Case`.
"""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_gen.cli import main
from tests.reliability.run_fixtures import (
    Case,
    assert_one_line_error,
    cli,
    planted_symlink,
    run_files,
    trained_run,
)

SMALL = ["--z-dim", "4", "--hidden-dim", "16", "--batch-size", "256", "--subset", "256",
         "--test-subset", "64", "--no-progress", "--no-compile"]  # fmt: skip
FRESH = ["train", "vae", "--data", "digits", "--epochs", "0", "--no-progress", "--out"]
HVAE = ["--layers", "2", "--guide", "auto"]


@functools.cache
def _trained_hvae() -> Path:
    root = Path(tempfile.mkdtemp(prefix="pyro-gen-hvae-"))
    atexit.register(shutil.rmtree, root, True)
    run = root / "hvae"
    args = ["train", "vae", "--data", "digits", *HVAE, *SMALL, "--epochs", "1", "--out", run]
    assert main([str(a) for a in args]) == 0
    return run


def _mask(mask: torch.Tensor) -> Callable[[Path, Path], None]:
    return lambda run, tmp: torch.save(mask, tmp / "mask.pt")


class _Payload:
    """Unpickling this creates ``marker``: a file that must never appear."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _edit_options(run: Path, **options: object) -> None:
    config = json.loads((run / "config.json").read_text())
    config["options"].update(options)
    (run / "config.json").write_text(json.dumps(config))


def _edited(model: str, data: str, **options: object) -> Callable[[Path, Path], None]:
    """Sets up ``{tmp}/MODEL``: a run recorded with --epochs 0, its options then edited."""

    def setup(run: Path, tmp: Path) -> None:
        args = ["train", model, "--data", data, "--epochs", "0", "--no-progress"]
        toy = [] if data == "digits" else ["--toy-samples", "64"]
        assert main([*args, *toy, "--out", str(tmp / model)]) == 0
        _edit_options(tmp / model, **options)

    return setup


def _resume(model: str, data: str) -> list[str]:
    toy = [] if data == "digits" else ["--toy-samples", "64"]
    return ["train", model, "--data", data, *toy, "--epochs", "1", "--no-progress", "--out",
            "{tmp}/" + model]  # fmt: skip


def _foreign_checkpoint(run: Path, tmp: Path) -> None:
    shutil.copy(trained_run(tmp, "one-layer") / "checkpoint.pt", run / "checkpoint.pt")


def _settings_only(run: Path, tmp: Path) -> None:
    assert main([*FRESH, str(tmp / "settings"), *HVAE]) == 0


IMPUTE = ["impute", "{hvae}", "--k", "3", "--num-test", "4"]
# digits' 1,500 training images (1797 with a fifth held out) of 8 x 8 pixels
NO_PIXEL = torch.zeros(1500, 8, 8, dtype=torch.bool)

CASES: dict[str, Case] = {
    # Options of a vae that contradict one another: refused before a folder is made, in the
    # command's words (they were refused by build_vae, naming guide='normal' and posterior=,
    # after the data were loaded, leaving a folder with a lock file).
    "vamp_prior_with_two_layers": Case(
        [*FRESH, "{tmp}/fresh", "--layers", "2", "--prior", "vamp"],
        ("--prior vamp", "--layers 2", "drop it"),
    ),
    "vamp_prior_with_the_auto_guide": Case(
        [*FRESH, "{tmp}/fresh", "--guide", "auto", "--prior", "vamp"],
        ("--prior vamp", "--guide auto"),
    ),
    "iaf_guide_with_two_layers": Case(
        [*FRESH, "{tmp}/fresh", "--layers", "2", "--guide", "iaf"],
        ("--guide iaf", "--guide normal (top-down) or auto"),
    ),
    "mask_file_and_missing_rate": Case(
        [*FRESH, "{tmp}/fresh", "--mask-file", "{tmp}/mask.pt", "--missing-rate", "0.3"],
        ("--mask-file", "--missing-rate"),
        _mask(NO_PIXEL),
    ),
    # Refused once the data are read: the folder this command made is removed again.
    "mask_file_missing": Case(
        [*FRESH, "{tmp}/fresh", "--mask-file", "{tmp}/none.pt"], ("--mask-file", "cannot read")
    ),
    "mask_file_observes_nothing": Case(
        [*FRESH, "{tmp}/fresh", "--mask-file", "{tmp}/mask.pt"],
        ("--mask-file", "observes no pixel"),
        _mask(NO_PIXEL),
    ),
    "mask_file_of_another_shape": Case(
        [*FRESH, "{tmp}/fresh", "--mask-file", "{tmp}/mask.pt"],
        ("mask has shape (3, 8, 8)",),
        _mask(torch.ones(3, 8, 8, dtype=torch.bool)),
    ),
    "mask_file_holds_a_pickle": Case(
        [*FRESH, "{tmp}/fresh", "--mask-file", "{tmp}/mask.pt"],
        ("--mask-file", "pickled objects, which pyro-gen does not load"),
        lambda run, tmp: torch.save(_Payload(tmp / "marker"), tmp / "mask.pt"),
    ),
    "mask_file_npy_of_objects": Case(
        [*FRESH, "{tmp}/fresh", "--mask-file", "{tmp}/mask.npy"],
        ("--mask-file", "pickled objects, which pyro-gen does not load"),
        lambda run, tmp: np.save(
            tmp / "mask.npy", np.array([_Payload(tmp / "marker")]), allow_pickle=True
        ),
    ),
    "ssvae_labels_beyond_the_data": Case(
        [
            "train",
            "ssvae",
            "--data",
            "digits",
            "--labels",
            "100000",
            "--epochs",
            "0",
            "--no-progress",
            "--out",
            "{tmp}/fresh",
        ],
        ("--labels 100000", "choose fewer"),
    ),  # fmt: skip
    "sizes_beyond_any_memory": Case(
        [*FRESH, "{tmp}/fresh", "--z-dim", str(10**12)], ("out of memory", "--z-dim")
    ),
    "nan_in_a_two_layer_vae": Case(
        [
            "train",
            "vae",
            "--data",
            "digits",
            *HVAE,
            *SMALL,
            "--epochs",
            "1",
            "--lr",
            "1e9",
            "--batch-size",
            "64",
            "--out",
            "{tmp}/nan",
        ],
        ("training stopped", "at step 2", "--lr"),  # the second step
    ),  # fmt: skip
    # One step at that rate: the loss was finite, the held-out ELBO is nan (this exited 0).
    "nan_held_out_after_one_step": Case(
        [
            "train",
            "vae",
            "--data",
            "digits",
            *HVAE,
            *SMALL,
            "--epochs",
            "1",
            "--lr",
            "1e9",
            "--out",
            "{tmp}/nan",
        ],
        ("training stopped", "held-out test_elbo is nan", "--lr"),
    ),  # fmt: skip  # fmt: skip
    # A resume of the 2-layer run that would change its model.
    "resume_with_other_layers": Case(
        [
            "train",
            "vae",
            "--data",
            "digits",
            *SMALL,
            "--epochs",
            "2",
            "--layers",
            "3",
            "--guide",
            "auto",
            "--out",
            "{hvae}",
        ],
        ("trained with --layers 2", "choose a fresh --out"),
    ),  # fmt: skip
    "resume_with_another_guide": Case(
        [
            "train",
            "vae",
            "--data",
            "digits",
            *SMALL,
            "--epochs",
            "2",
            "--layers",
            "2",
            "--guide",
            "normal",
            "--out",
            "{hvae}",
        ],
        ("trained with --guide auto",),
    ),  # fmt: skip
    # A checkpoint of a one-layer vae copied into the run: refused before config.json is
    # rewritten, as evaluate refuses it (fit refused it after, naming its checkpoint_dir).
    "resume_from_a_foreign_checkpoint": Case(
        ["train", "vae", "--data", "digits", "--epochs", "2", "--no-progress", "--out", "{hvae}"],
        ("not a pyro_gen.vae.hierarchical.HierarchicalVAE", "restore the run's own checkpoint"),
        lambda run, tmp: _foreign_checkpoint(run, tmp),
    ),
    "impute_from_a_foreign_checkpoint": Case(
        IMPUTE,
        ("not a pyro_gen.vae.hierarchical.HierarchicalVAE", "to retrain"),
        lambda run, tmp: _foreign_checkpoint(run, tmp),
    ),
    # config.json edited or damaged: the vae's data options are refused naming the file
    "config_mask_file_a_number": Case(
        ["train", "vae", "--data", "digits", "--epochs", "2", "--no-progress", "--out", "{hvae}"],
        ("config.json records", "mask_file = 5", "restore it"),
        lambda run, tmp: _edit_options(run, mask_file=5),
    ),
    "config_missing_rate_text": Case(
        ["evaluate", "{hvae}", "--num-test", "4"],
        ("config.json records the vae option missing_rate = 'x'",),
        lambda run, tmp: _edit_options(run, missing_rate="x"),
    ),
    "config_mask_file_of_text": Case(
        ["train", "vae", "--data", "digits", "--epochs", "2", "--no-progress", "--out", "{hvae}"],
        ("cannot read a mask",),  # torch.load raised IndexError on a text file
        lambda run, tmp: (
            (tmp / "notes.txt").write_text("root:x:0:0\n" * 50),
            _edit_options(run, mask_file=str(tmp / "notes.txt")),
        ),
    ),
    "config_ssvae_labels_text": Case(
        _resume("ssvae", "digits"),
        ("config.json records", "labels = 'x'"),  # a TypeError traceback
        _edited("ssvae", "digits", labels="x"),
    ),
    "config_ssvae_labels_negative": Case(
        _resume("ssvae", "digits"),
        ("config.json records", "labels = -3"),  # trained, on an empty labelled set
        _edited("ssvae", "digits", labels=-3),
    ),
    # Options checked as their flags check them (each escaped as a traceback).
    "config_gan_loss_unknown": Case(
        _resume("gan", "ring"), ("option loss = 'xyz'",), _edited("gan", "ring", loss="xyz")
    ),
    "config_wgan_loss_of_gan": Case(
        _resume("wgan", "ring"),
        ("option loss = 'nonsaturating'",),  # trained a wgan on another loss
        _edited("wgan", "ring", loss="nonsaturating"),
    ),
    "config_iwae_k_zero": Case(
        _resume("vae", "digits"),
        ("option k = 0",),  # ZeroDivisionError
        _edited("vae", "digits", objective="iwae", k=0),
    ),
    "config_cnf_objective_unknown": Case(
        _resume("cnf", "moons"),
        ("option objective = 'xyz'",),  # KeyError
        _edited("cnf", "moons", objective="xyz"),
    ),
    "resume_as_another_model": Case(
        ["train", "ddpm", "--data", "digits", "--epochs", "2", "--out", "{hvae}"],
        ("holds a vae run on digits", "fresh --out"),
    ),
    # impute on the 2-layer run: bad options, outputs planted or misplaced, the wrong run.
    "impute_hides_nothing": Case([*IMPUTE, "--missing-rate", "0"], ("--missing-rate 0",)),
    "impute_hides_everything": Case([*IMPUTE, "--missing-rate", "1"], ("[0, 1)",)),
    "impute_k_zero": Case([*IMPUTE[:2], "--k", "0"], ("--k", "positive")),
    "impute_symlink_png": Case(IMPUTE, ("is a symlink",), planted_symlink("imputed.png")),
    "impute_symlink_json": Case(IMPUTE, ("is a symlink",), planted_symlink("imputation.json")),
    "impute_out_missing_folder": Case(
        [*IMPUTE, "--out", "{tmp}/no/such/x.png"], ("does not exist",)
    ),
    "impute_out_onto_the_checkpoint": Case([*IMPUTE, "--out", "{hvae}/checkpoint.pt"], (".png",)),
    "impute_device_meta": Case([*IMPUTE, "--device", "meta"], ("--device meta",)),
    "impute_a_run_without_checkpoint": Case(
        ["impute", "{tmp}/settings"], ("has no checkpoint.pt", "--epochs 1"), _settings_only
    ),
    "impute_a_damaged_checkpoint": Case(
        IMPUTE,
        ("damaged", "pyro-gen train vae"),
        lambda run, tmp: _flip_byte(run / "checkpoint.pt"),
    ),
    # evaluate and sample on the 2-layer run
    "evaluate_probability_flow": Case(
        ["evaluate", "{hvae}", "--probability-flow"], ("--probability-flow", "drop it")
    ),
    "evaluate_symlink_json": Case(
        ["evaluate", "{hvae}", "--num-test", "4"],
        ("is a symlink",),
        planted_symlink("evaluation.json"),
    ),
    "sample_with_a_ddpm_sampler": Case(
        ["sample", "{hvae}", "--sampler", "ddim"], ("--sampler applies to ddpm",)
    ),
    "sample_onto_the_config": Case(["sample", "{hvae}", "--out", "{hvae}/config.json"], (".png",)),
}


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_and_loses_nothing(name, tmp_path, capsys):
    case = CASES[name]
    run = tmp_path / "hvae"
    shutil.copytree(_trained_hvae(), run)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    if case.setup is not None:
        case.setup(run, scratch)
    before, made = run_files(run), set(scratch.iterdir())
    victim = (scratch / "victim").read_bytes() if (scratch / "victim").exists() else None
    args = [a.format(hvae=run, tmp=scratch) for a in case.args]
    status, _, err = cli(capsys, *args)
    assert_one_line_error(status, err, *case.expect)
    assert run_files(run) == before  # nothing in the run was changed or added
    if victim is not None:
        assert (scratch / "victim").read_bytes() == victim  # the symlink was not followed
    assert not (scratch / "marker").exists()  # nothing was executed from a file
    left = set(scratch.iterdir()) - made
    if name == "nan_in_a_two_layer_vae":  # accepted, then diverged: the record stays
        # (and the lock file the failed run made goes with it)
        assert sorted(p.name for p in (scratch / "nan").iterdir()) == ["config.json"]
    elif name == "nan_held_out_after_one_step":  # no figure drawn from nan parameters
        assert not (scratch / "nan" / "samples.png").exists()
    else:
        assert not left, left  # a refused fresh run leaves no folder behind


def test_a_refused_run_keeps_the_empty_folder_the_user_made(tmp_path, capsys):
    # the clean-up removes only a folder the command itself created
    out = tmp_path / "mine"
    out.mkdir()
    status, _, err = cli(capsys, *FRESH, out, "--mask-file", tmp_path / "none.pt")
    assert_one_line_error(status, err, "--mask-file")
    assert out.is_dir()


def test_debug_shows_the_out_of_memory_traceback(tmp_path, capsys):
    with pytest.raises(RuntimeError, match="allocate"):
        cli(capsys, *FRESH, tmp_path / "big", "--z-dim", str(10**12), "--debug")


def test_a_refused_impute_option_leaves_the_last_imputation(tmp_path, capsys):
    # a good impute writes imputation.json; a refused one afterwards keeps it as it was
    run = tmp_path / "hvae"
    shutil.copytree(_trained_hvae(), run)
    status, _, err = cli(capsys, *[a.format(hvae=run) for a in IMPUTE])
    assert status == 0, err
    written = json.loads((run / "imputation.json").read_text())
    assert written["missing_rate"] == 0.5 and written["num_test"] == 4
    before = (run / "imputation.json").read_bytes()
    status, _, err = cli(capsys, *[a.format(hvae=run) for a in IMPUTE], "--missing-rate", "0")
    assert_one_line_error(status, err, "nothing to impute")
    assert (run / "imputation.json").read_bytes() == before


def test_a_resume_refuses_a_mask_file_changed_since_training(tmp_path, capsys):
    # The run records the mask's SHA-256: a resume trained on whatever the file held by
    # then, so config.json no longer described the checkpoint.
    mask = torch.ones(256, 8, 8, dtype=torch.bool)
    mask[:, 4:] = False
    torch.save(mask, tmp_path / "mask.pt")
    run = tmp_path / "masked"
    train = ["train", "vae", "--data", "digits", *SMALL, "--mask-file", tmp_path / "mask.pt",
             "--out", run]  # fmt: skip
    status, _, err = cli(capsys, *train, "--epochs", "1")
    assert status == 0, err
    torch.save(~mask, tmp_path / "mask.pt")  # the other half observed
    before = run_files(run)
    status, _, err = cli(capsys, *train, "--epochs", "2")
    assert_one_line_error(status, err, "now holds another mask", "fresh --out")
    assert run_files(run) == before
    torch.save(mask, tmp_path / "mask.pt")  # restored: the resume goes on
    status, _, err = cli(capsys, *train, "--epochs", "2")
    assert status == 0, err
