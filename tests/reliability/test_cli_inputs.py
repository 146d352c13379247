"""A table of bad command lines and broken run directories: each must be refused with one
line on stderr that says what was wrong, a non-zero exit and no traceback, and must leave
the run it touched byte for byte as it was.

To add a fault, add a :class:`Case`: the command (``{run}`` is a copy of a trained VAE run,
``{tmp}`` a scratch folder), an optional ``setup(run, tmp)`` that breaks something first,
and the words the error line must contain.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tests.reliability.run_fixtures import (
    Case,
    assert_one_line_error,
    cli,
    planted_symlink,
    run_files,
    trained_run,
)

TRAIN = ["train", "vae", "--data", "digits", "--no-progress", "--out", "{run}"]


def _write(name: str, text: str) -> Callable[[Path, Path], None]:
    return lambda run, tmp: (run / name).write_text(text)


def _edit_config(edit: Callable[[dict], None]) -> Callable[[Path, Path], None]:
    def setup(run: Path, tmp: Path) -> None:
        config = json.loads((run / "config.json").read_text())
        edit(config)
        (run / "config.json").write_text(json.dumps(config))

    return setup


def _settings_only(*train: str) -> Callable[[Path, Path], None]:
    """Sets up ``{tmp}/settings``: a run of ``train`` recorded with --epochs 0."""

    def setup(run: Path, tmp: Path) -> None:
        from pyro_gen.cli import main

        out = str(tmp / "settings")
        assert main(["train", *train, "--epochs", "0", "--no-progress", "--out", out]) == 0

    return setup


def _cache_directory(run: Path, tmp: Path) -> None:
    (tmp / "data" / "mnist" / "train-images-idx3-ubyte").mkdir(parents=True)
    os.environ["PYRO_GEN_DATA"] = str(tmp / "data")  # restored by the test


CASES: dict[str, Case] = {
    # Options checked where they are parsed.
    "lr_inf": Case([*TRAIN, "--lr", "inf"], ("--lr", "finite number > 0")),
    "lr_zero": Case([*TRAIN, "--lr", "0"], ("--lr", "finite number > 0")),
    "lr_nan": Case([*TRAIN, "--lr", "nan"], ("--lr",)),
    "lr_text": Case([*TRAIN, "--lr", "fast"], ("--lr", "must be a number")),
    "seed_negative": Case([*TRAIN, "--seed", "-3"], ("--seed", "from 0 to 2**32 - 1")),
    "seed_too_large": Case([*TRAIN, "--seed", str(2**32)], ("--seed", "from 0 to 2**32 - 1")),
    "grad_clip_negative": Case([*TRAIN, "--grad-clip", "-1"], ("--grad-clip", "> 0")),
    "grad_clip_zero": Case([*TRAIN, "--grad-clip", "0"], ("--grad-clip", "> 0")),
    "epochs_fraction": Case([*TRAIN, "--epochs", "2.5"], ("--epochs", "whole number")),
    "epochs_negative": Case([*TRAIN, "--epochs", "-1"], ("--epochs", "non-negative")),
    "batch_size_zero": Case([*TRAIN, "--batch-size", "0"], ("--batch-size", "positive")),
    "ema_decay_one": Case(["train", "ddpm", "--data", "moons", "--ema-decay", "1"], ("(0, 1)",)),
    "unknown_model": Case(["train", "gpt", "--data", "digits"], ("invalid choice",)),
    "unknown_command": Case(["fine-tune", "x"], ("invalid choice",)),
    # Options of another model, or of other data.
    "schedule_on_realnvp": Case(
        ["train", "realnvp", "--data", "moons", "--schedule", "cosine", "--out", "{tmp}/r"],
        ("--schedule is not an option of realnvp", "ddpm"),
        creates_nothing=True,
    ),
    "z_dim_on_ddpm": Case(
        ["train", "ddpm", "--data", "moons", "--z-dim", "3", "--out", "{tmp}/r"],
        ("--z-dim is not an option of ddpm",),
        creates_nothing=True,
    ),
    "k_without_iwae": Case([*TRAIN, "--k", "5"], ("--k applies only with --objective iwae",)),
    "toy_samples_on_images": Case([*TRAIN, "--toy-samples", "9"], ("--toy-samples",)),
    "dequantization_on_toys": Case(
        ["train", "realnvp", "--data", "moons", "--dequantization", "variational"],
        ("--dequantization applies to image data",),
    ),
    "vae_on_toys": Case(["train", "vae", "--data", "moons"], ("models images",)),
    # Options the chosen options or data make unread.
    "hidden_dim_on_image_ncsn": Case(
        ["train", "ncsn", "--data", "digits", "--hidden-dim", "8", "--out", "{tmp}/r"],
        ("--hidden-dim", "U-Net", "drop it"),
        creates_nothing=True,
    ),
    "hidden_dim_on_mnist_gan": Case(
        ["train", "gan", "--data", "mnist", "--hidden-dim", "8", "--out", "{tmp}/r"],
        ("--hidden-dim", "DCGAN", "drop it"),
        creates_nothing=True,
    ),
    "velocity_net_on_image_cnf": Case(
        ["train", "cnf", "--data", "digits", "--velocity-net", "concat_squash", "--out", "{tmp}/r"],
        ("--velocity-net", "2D data", "drop it"),
        creates_nothing=True,
    ),  # fmt: skip
    "flow_matching_on_image_cnf": Case(
        ["train", "cnf", "--data", "digits", "--objective", "flow-matching", "--out", "{tmp}/r"],
        ("--objective flow-matching", "2D toy data", "drop it"),
        creates_nothing=True,
    ),  # fmt: skip
    "test_subset_without_held_out_scoring": Case(
        ["train", "sde", "--data", "moons", "--test-subset", "8", "--out", "{tmp}/r"],
        ("--test-subset", "--num-test", "drop it"),
        creates_nothing=True,
    ),
    # Devices.
    "device_meta": Case([*TRAIN, "--device", "meta"], ("--device meta",)),
    "device_unknown": Case(["sample", "{run}", "--device", "gpu7"], ("unknown --device 'gpu7'",)),
    "device_missing": Case(["evaluate", "{run}", "--device", "cuda:7"], ("--device cuda:7",)),
    # The file system.
    "out_is_a_file": Case([*TRAIN[:-1], "{run}/config.json"], ("is a file", "choose a directory")),
    "out_under_a_file": Case(
        [*TRAIN[:-1], "{run}/config.json/deeper"], ("is under", "which is a file")
    ),
    "run_missing": Case(["evaluate", "{tmp}/nothing"], ("does not exist",)),
    "run_is_a_file": Case(["sample", "{run}/metrics.jsonl"], ("is a file",)),
    "sample_out_missing_folder": Case(
        ["sample", "{run}", "--out", "{tmp}/no/such/dir/s.png"], ("does not exist",)
    ),
    "sample_out_not_png": Case(["sample", "{run}", "--out", "{tmp}/s.jpeg"], (".png",)),
    "cache_file_is_a_directory": Case(
        ["train", "vae", "--data", "mnist", "--out", "{tmp}/m"],
        ("is a directory", "train-images-idx3-ubyte"),
        _cache_directory,
    ),
    # Symlinks planted where a run file goes: refused, never followed.
    "symlink_samples_png": Case(
        ["sample", "{run}"], ("is a symlink",), planted_symlink("samples.png")
    ),
    "symlink_config": Case(
        [*TRAIN, "--epochs", "2"], ("is a symlink",), planted_symlink("config.json")
    ),
    "symlink_metrics": Case(
        [*TRAIN, "--epochs", "2"], ("is a symlink",), planted_symlink("metrics.jsonl")
    ),
    "symlink_evaluation": Case(
        ["evaluate", "{run}"], ("is a symlink",), planted_symlink("evaluation.json")
    ),
    # Broken run records.
    "config_is_a_list": Case(["evaluate", "{run}"], ("holds a list",), _write("config.json", "[]")),
    "config_not_json": Case(["sample", "{run}"], ("not valid JSON",), _write("config.json", "{")),
    "config_lacks_keys": Case(
        ["evaluate", "{run}"],
        ("lacks settings", "'options'"),
        _edit_config(lambda c: c.pop("options")),
    ),
    "config_lacks_options": Case(
        ["sample", "{run}"],
        ("lacks the vae options", "z_dim"),
        _edit_config(lambda c: c["options"].pop("z_dim")),
    ),
    "config_unknown_model": Case(
        ["sample", "{run}"], ("cannot build",), _edit_config(lambda c: c.update(model="gpt"))
    ),
    "config_missing_with_checkpoint": Case(
        [*TRAIN, "--epochs", "2"],
        ("no config.json",),
        lambda run, tmp: (run / "config.json").unlink(),
    ),
    "checkpoint_bare_state_dict": Case(
        ["evaluate", "{run}"],
        ("plain torch.save", "pyro-gen train vae"),
        lambda run, tmp: torch.save({"w": torch.zeros(1)}, run / "checkpoint.pt"),
    ),
    "checkpoint_missing": Case(
        ["sample", "{run}"],
        ("has no checkpoint.pt",),
        lambda run, tmp: (run / "checkpoint.pt").unlink(),
    ),
    "checkpoint_is_a_directory": Case(
        [*TRAIN, "--epochs", "2"],
        ("not a regular file",),
        lambda run, tmp: ((run / "checkpoint.pt").unlink(), (run / "checkpoint.pt").mkdir()),
    ),
    # The wrong run for the command.
    "ddim_on_a_vae": Case(["sample", "{run}", "--sampler", "ddim"], ("--sampler applies to ddpm",)),
    "steps_on_a_vae": Case(["sample", "{run}", "--steps", "10"], ("--steps applies to ddpm",)),
    "steps_with_the_ode_sampler": Case(
        ["sample", "{tmp}/settings", "--sampler", "ode", "--steps", "10"],
        ("--steps does not apply to --sampler ode",),
        _settings_only("ddpm", "--data", "moons", "--timesteps", "10", "--toy-samples", "64"),
    ),
    # the DDPM's ancestral chain runs all T steps: refused before the run is loaded (it was
    # refused after, as "use sampler='ddim' for fewer")
    "steps_with_the_ancestral_default": Case(
        ["sample", "{tmp}/settings", "--steps", "3"],
        ("--steps does not apply to ancestral sampling", "--sampler (ddim"),
        _settings_only("ddpm", "--data", "moons", "--timesteps", "10", "--toy-samples", "64"),
    ),
    "steps_with_the_ancestral_sampler": Case(
        ["sample", "{tmp}/settings", "--sampler", "ancestral", "--steps", "3"],
        ("--steps does not apply to --sampler ancestral",),
        _settings_only("ddpm", "--data", "moons", "--timesteps", "10", "--toy-samples", "64"),
    ),
    # evaluate's options that this run's evaluation does not read
    "num_samples_on_a_vae": Case(
        ["evaluate", "{run}", "-n", "100"], ("-n/--num-samples", "does not apply", "--k")
    ),
    "classifier_epochs_on_a_vae": Case(
        ["evaluate", "{run}", "--classifier-epochs", "2"], ("--classifier-epochs", "drop it")
    ),
    "probability_flow_on_a_vae": Case(
        ["evaluate", "{run}", "--probability-flow"], ("--probability-flow", "a vae run")
    ),
    "k_on_a_2d_flow": Case(
        ["evaluate", "{tmp}/settings", "--k", "10"],
        ("--k", "a realnvp run on moons", "takes --num-test"),
        _settings_only("realnvp", "--data", "moons", "--toy-samples", "64"),
    ),
    "num_test_on_a_mixture_gan": Case(
        ["evaluate", "{tmp}/settings", "--num-test", "10"],
        ("--num-test", "takes -n/--num-samples"),
        _settings_only("gan", "--data", "ring", "--toy-samples", "64"),
    ),
    "other_model_into_run": Case(
        ["train", "realnvp", "--data", "digits", "--out", "{run}"], ("holds a vae run",)
    ),
    # Resume with settings other than the recorded ones.
    "resume_other_lr": Case([*TRAIN, "--epochs", "2", "--lr", "0.01"], ("--override lr",)),
    "resume_other_batch_size": Case(
        [*TRAIN, "--epochs", "2", "--batch-size", "32"], ("--batch-size 256", "--override")
    ),
    "resume_other_seed": Case([*TRAIN, "--epochs", "2", "--seed", "3"], ("--seed 0",)),
    "resume_other_dataset_size": Case(
        [*TRAIN, "--epochs", "2", "--subset", "100"], ("--subset None", "--override subset")
    ),
    "resume_other_architecture": Case(
        [*TRAIN, "--epochs", "2", "--z-dim", "8", "--override", "lr"], ("change the model",)
    ),
    "override_architecture": Case(
        [*TRAIN, "--override", "z-dim"], ("'z-dim' cannot be changed on resume",)
    ),
    "override_on_a_fresh_run": Case(
        ["train", "vae", "--data", "digits", "--override", "lr", "--out", "{tmp}/fresh"],
        ("--override applies when resuming",),
        creates_nothing=True,
    ),
    "k_without_iwae_on_a_fresh_run": Case(
        ["train", "vae", "--data", "digits", "--k", "5", "--out", "{tmp}/fresh"],
        ("--k applies only with --objective iwae",),
        creates_nothing=True,
    ),
    # Divergence: the learning rate is the likely cause, and the message says so.
    "loss_becomes_nan": Case(
        [
            "train",
            "realnvp",
            "--data",
            "moons",
            "--lr",
            "5",
            "--toy-samples",
            "512",
            "--epochs",
            "1",
            "--no-progress",
            "--out",
            "{tmp}/nan",
        ],  # fmt: skip
        ("training stopped", "--lr", "--grad-clip"),
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_and_keeps_the_run(name, tmp_path, capsys, monkeypatch):
    case = CASES[name]
    run = trained_run(tmp_path)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setenv("PYRO_GEN_DATA", os.environ.get("PYRO_GEN_DATA", ""))
    if not os.environ["PYRO_GEN_DATA"]:
        monkeypatch.delenv("PYRO_GEN_DATA")
    if case.setup is not None:
        case.setup(run, scratch)
    before = run_files(run)
    victim = (scratch / "victim").read_bytes() if (scratch / "victim").exists() else None
    args = [a.format(run=run, tmp=scratch) for a in case.args]
    status, out, err = cli(capsys, *args)
    assert_one_line_error(status, err, *case.expect)
    assert run_files(run) == before  # nothing in the run was changed or added
    if victim is not None:
        assert (scratch / "victim").read_bytes() == victim  # the symlink was not followed
    if case.creates_nothing:
        assert sorted(p.name for p in scratch.iterdir()) == ([] if victim is None else ["victim"])


def test_debug_shows_the_traceback(tmp_path, capsys):
    run = trained_run(tmp_path)
    (run / "config.json").write_text("[]")
    from pyro_gen.runs import RunError

    with pytest.raises(RunError, match="holds a list"):
        cli(capsys, "evaluate", run, "--debug")
