"""The VAEs of the ``pyro-gen`` command: ``vae`` (also on incomplete data: ``--missing-rate``
hides pixels at random, or ``--mask-file`` gives the training images' own mask, and the model
scores only the observed ones; with ``--objective iwae`` that is MIWAE) and the
semi-supervised M2 model ``ssvae`` (``--labels N`` labelled examples, the rest unlabelled;
``--labelled-passes`` and ``--alpha`` weight them).

Example:
    >>> mask = missing_mask(torch.zeros(4, 8, 8), 0.5, seed=0, split="train")
    >>> mask.shape, mask.dtype
    (torch.Size([4, 8, 8]), torch.bool)
"""

from __future__ import annotations

import hashlib
import math
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pyro.infer import TraceEnum_ELBO

from pyro_gen.cli_evaluate import bound_results, with_se
from pyro_gen.cli_spec import Evaluation, ModelSpec, UsageError


def missing_mask(x: torch.Tensor, rate: float, seed: int, split: str) -> torch.Tensor:
    """The observation mask (True = observed) of a split: each pixel missing with
    probability ``rate``, the same pixels for the same seed (train and test differ)."""
    from pyro_gen.vae import missing_at_random

    generator = torch.Generator().manual_seed(2 * int(seed) + (split != "train"))
    return missing_at_random(x.shape, float(rate), generator)


def load_mask(path: str | Path, x: torch.Tensor) -> torch.Tensor:
    """The observation mask in ``path`` (True = observed) for the images ``x``, checked.

    The file holds a tensor saved with ``torch.save`` (``.pt``) or a NumPy array (``.npy``),
    boolean or of zeros and ones, one entry per pixel of each image.

    Raises:
        UsageError: the file cannot be read, holds something else, or its shape is not
            ``x``'s.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "mask.pt"
        >>> torch.save(torch.tensor([[1, 0], [0, 1]]), path)
        >>> load_mask(path, torch.zeros(2, 2)).tolist()
        [[True, False], [False, True]]
    """
    path = Path(path)
    pickled = UsageError(
        f"--mask-file {path}: cannot read a mask from it: it is no tensor saved by torch.save "
        "or NumPy array, or it holds pickled objects, which pyro-gen does not load (nothing "
        "in it was run); save the mask tensor alone (torch.save(mask, path)) or as a .npy array"
    )
    try:
        if path.suffix == ".npy":
            mask = torch.from_numpy(np.load(path, allow_pickle=False))
        else:
            mask = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's own message advises weights_only=False: never for a file handed to us
        raise pickled from None
    except ValueError as e:
        if "pickle" in str(e):  # NumPy advises allow_pickle=True for some: nor that
            raise pickled from None
        raise UsageError(f"--mask-file {path}: cannot read a mask from it ({e})") from None
    except Exception as e:  # noqa: BLE001 - a file of any other format fails in any way
        # (/etc/passwd raised IndexError inside torch.load); weights_only runs nothing
        raise UsageError(f"--mask-file {path}: cannot read a mask from it ({e})") from None
    if not isinstance(mask, torch.Tensor):
        raise UsageError(f"--mask-file {path}: holds a {type(mask).__name__}, not a tensor")
    if tuple(mask.shape) != tuple(x.shape):
        raise UsageError(
            f"--mask-file {path}: the mask has shape {tuple(mask.shape)} but the training "
            f"images have shape {tuple(x.shape)}; give one entry per pixel of each image "
            "(True = observed)"
        )
    if mask.dtype != torch.bool:
        if mask.is_complex() or not bool(((mask == 0) | (mask == 1)).all()):
            raise UsageError(
                f"--mask-file {path}: the mask must be boolean or hold only 0 and 1 (1 = observed)"
            )
        mask = mask != 0
    if not bool(mask.any()):  # the model would score nothing and train on the prior alone
        raise UsageError(
            f"--mask-file {path}: the mask observes no pixel (all False or 0); mark the "
            "observed pixels True or 1"
        )
    return mask


# ---------------------------------------------------------------------------------------
# vae


def _build_vae(event_shape: tuple[int, ...], opts: dict[str, Any]) -> torch.nn.Module:
    from pyro_gen.vae import build_vae

    return build_vae(
        event_shape,
        prior=opts["prior"],
        guide=opts["guide"],
        layers=opts["layers"],
        likelihood=opts["likelihood"],
        z_dim=opts["z_dim"],
        hidden_dim=opts["hidden_dim"],
    )


def _vae_loss(event_shape: tuple[int, ...], opts: dict[str, Any]) -> Any:
    from pyro_gen.vae import make_loss

    return make_loss(opts["objective"], num_particles=opts["k"])


def _recorded(config: dict, name: str, valid: bool) -> None:
    # a value the command line never records: config.json was edited or damaged (it met
    # Path(5) or float('x') as a traceback or a line that did not name the file)
    if not valid:
        raise UsageError(
            f"the run's config.json records {name} = {config['options'].get(name)!r}, which "
            "`pyro-gen train` never records; restore it from a copy or retrain into a fresh "
            "directory"
        )


def _vae_data(x: torch.Tensor, y: torch.Tensor | None, config: dict, split: str) -> Any:
    rate = config["options"].get("missing_rate") or 0.0
    mask_file = config["options"].get("mask_file")
    number = isinstance(rate, (int, float)) and not isinstance(rate, bool)
    _recorded(config, "missing_rate", number and 0 <= rate < 1)
    _recorded(config, "mask_file", mask_file is None or isinstance(mask_file, str))
    if mask_file and rate:
        raise UsageError("give --missing-rate or --mask-file, not both")
    if mask_file:  # the training images' own mask; held-out images are scored whole
        if split != "train":
            return x
        mask = load_mask(mask_file, x)
        _check_recorded_mask(mask, mask_file, config)
        return {"x": x, "mask": mask}
    if not rate:
        return x
    return {"x": x, "mask": missing_mask(x, rate, config["seed"], split)}


# config.json's record of the mask a run trained on (the file can change after training)
MASK_DIGEST = "mask_file_sha256"


def _check_recorded_mask(mask: torch.Tensor, path: str, config: dict[str, Any]) -> None:
    """Records the SHA-256 of the mask in ``config`` (a fresh run, or one recorded before
    the digest was), or refuses a mask other than the recorded one: a resume trained on
    whatever the file held by then, so the record no longer described the checkpoint."""
    digest = hashlib.sha256(mask.contiguous().numpy().tobytes()).hexdigest()
    recorded = config.setdefault(MASK_DIGEST, digest)
    if recorded != digest:
        raise UsageError(
            f"--mask-file {path} now holds another mask than the one this run was trained on "
            "(its SHA-256 differs from the one in config.json); restore that mask to resume, "
            "or train into a fresh --out"
        )


def _vae_evaluate(ev: Evaluation) -> dict[str, Any]:
    opts = {**VAE_MODELS["vae"].added_later, **ev.config["options"]}
    discrete = VAE_MODELS["vae"].discrete(opts)
    data = _vae_data(ev.view.x, None, ev.config, "test")
    results = bound_results(ev, discrete, data)
    if isinstance(data, dict):  # the bounds are of the observed pixels only
        results["missing_rate"] = opts["missing_rate"]
    return results


# ---------------------------------------------------------------------------------------
# ssvae


def _build_ssvae(event_shape: tuple[int, ...], opts: dict[str, Any]) -> torch.nn.Module:
    from pyro_gen.vae import SSVAE

    return SSVAE(
        event_shape, opts["num_classes"], opts["z_dim"], (opts["hidden_dim"],), alpha=opts["alpha"]
    )


def labelled_indices(y: torch.Tensor, count: int, num_classes: int) -> torch.Tensor:
    """The first ``count`` examples of ``y`` taken class by class (as equal a share of
    each class as ``count`` allows), as Kingma et al. choose their labelled set.

    Example:
        >>> labelled_indices(torch.tensor([0, 0, 0, 1, 1, 1]), 4, 2).tolist()
        [0, 1, 3, 4]
    """
    chosen = []
    for c in range(num_classes):
        share = count // num_classes + (c < count % num_classes)
        chosen.append(torch.nonzero(y == c).flatten()[:share])
    return torch.cat(chosen).sort().values


def _ssvae_data(x: torch.Tensor, y: torch.Tensor | None, config: dict, split: str) -> Any:
    from pyro_gen.vae import semi_supervised_batches

    if split != "train":  # held out: the bound of unlabelled data, the label summed out
        return {"x": x}
    opts = {**VAE_MODELS["ssvae"].added_later, **config["options"]}
    count, passes = opts["labels"], opts["labelled_passes"]
    _recorded(
        config, "labels", isinstance(count, int) and not isinstance(count, bool) and count >= 1
    )
    number = isinstance(passes, (int, float)) and not isinstance(passes, bool)
    _recorded(config, "labelled_passes", number and math.isfinite(passes) and passes > 0)
    if count >= x.shape[0]:
        raise UsageError(
            f"--labels {count} leaves no unlabelled training example (there are "
            f"{x.shape[0]}); choose fewer labels"
        )
    labelled = labelled_indices(y, count, opts["num_classes"])
    rest = torch.ones(x.shape[0], dtype=torch.bool)
    rest[labelled] = False
    generator = torch.Generator().manual_seed(int(config["seed"]))
    return semi_supervised_batches(
        x[labelled],
        y[labelled],
        x[rest],
        config["batch_size"],
        labelled_passes=opts["labelled_passes"],
        generator=generator,
    )


def _ssvae_evaluate(ev: Evaluation) -> dict[str, Any]:
    from pyro_gen.infer import evaluate_elbo
    from pyro_gen.infer.evaluation import module_device

    view, model = ev.view, ev.model
    x = view.x.to(module_device(model))  # beside the model, which classifies it
    x = view.transform(x) if view.transform is not None else x
    results: dict[str, Any] = {"num_test": int(x.shape[0])}
    with torch.no_grad():
        wrong = (model.classify(x) != ev.labels.to(x.device)).double()
    with_se(results, "test_error", wrong)
    # per example, for its standard error: the README promises one beside every average
    elbo = evaluate_elbo(
        model, {"x": x}, loss=TraceEnum_ELBO(max_plate_nesting=1), per_example=True
    )
    with_se(results, "test_elbo", elbo)
    return results


def _vae_unused(opts: dict[str, Any], data: str) -> dict[str, str]:
    """The vae options these options leave unread, or contradict (refused before the run
    directory is made; build_vae refused them only once the data were loaded, in its own
    words: ``guide='normal'``, ``posterior=...``)."""
    unused = {} if opts["objective"] == "iwae" else {"k": "applies only with --objective iwae"}
    layers = opts["layers"]
    if layers > 1 and opts["guide"] == "iaf":
        unused["guide"] = (
            f"iaf is a posterior family of one latent layer, and --layers {layers} asks for "
            f"{layers}: a {layers}-layer vae takes --guide normal (top-down) or auto"
        )
    if opts["prior"] == "vamp" and (layers > 1 or opts["guide"] == "auto"):
        which = f"--layers {layers}" if layers > 1 else "--guide auto"
        unused["prior"] = (
            "vamp mixes the posteriors of a one-layer amortized guide (--guide normal or iaf), "
            f"which {which} does not have"
        )
    if opts["mask_file"] and opts["missing_rate"]:  # one mask or the other: not both
        unused["mask_file"] = (
            "gives the training images' own mask, and --missing-rate draws another at random "
            "(one or the other)"
        )
    return unused


_VAE_OPTIONS = ("z_dim", "hidden_dim", "layers", "likelihood", "prior", "guide", "objective", "k")

VAE_MODELS: dict[str, ModelSpec] = {
    "vae": ModelSpec(
        build=_build_vae,
        data_kind=lambda o: "binary" if o["likelihood"] == "bernoulli" else "unit",
        options=(*_VAE_OPTIONS, "missing_rate", "mask_file"),
        # the held-out bound, and the IWAE over its latent
        evaluate_options=lambda o, data: ("k", "num_test"),
        loss=_vae_loss,
        images_only=True,
        # bits/dim divide by every pixel: not for a bound on the observed ones
        discrete=lambda o: not o["likelihood"].startswith("gaussian") and not o["missing_rate"],
        choices={"objective": ("elbo", "meanfield", "iwae", "freebits")},
        added_later={"missing_rate": 0.0, "mask_file": None},
        loss_options=("objective", "k"),
        # k: the training particles of the IWAE bound; the other objectives draw one
        unused_options=_vae_unused,
        # fit's test_elbo is the ELBO whatever the objective; its train_loss is the objective's
        train_bound=lambda o: {
            "iwae": f"IWAE bound (k={o['k']})",
            "freebits": "free-bits objective",
        }.get(o["objective"]),
        fit_data=_vae_data,
        evaluate=_vae_evaluate,
    ),
    "ssvae": ModelSpec(
        build=_build_ssvae,
        data_kind=lambda o: "binary",
        options=("z_dim", "hidden_dim", "labels", "labelled_passes", "alpha"),
        # the test error and the ELBO with the label summed out: no importance sampling
        evaluate_options=lambda o, data: ("num_test",),
        added_later={"labelled_passes": 1.0, "alpha": 50.0},
        # TraceEnum_ELBO sums the label out of unlabelled batches exactly.
        loss=lambda shape, o: TraceEnum_ELBO(max_plate_nesting=1),
        images_only=True,
        labelled=True,
        fit_data=_ssvae_data,
        evaluate=_ssvae_evaluate,
    ),
}
