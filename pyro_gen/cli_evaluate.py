"""What ``pyro-gen evaluate`` measures, one function per kind of model: bounds (test ELBO and
importance-weighted log-likelihood), exact densities (flows, flow matching, score models by
the probability-flow ODE), and sample quality (mode coverage on 2D mixtures; classifier
Frechet distance, class coverage and label agreement on images).

Every function takes an :class:`~pyro_gen.cli_spec.Evaluation` and returns plain numbers
(``name -> float``), each mean over test examples beside its standard error as ``NAME_se``.

Example:
    >>> _mean_se(torch.tensor([1.0, 3.0])), _mean_se(torch.tensor([1.0]))
    ((2.0, 1.0), (1.0, None))
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from pyro.poutine.util import site_is_subsample

from pyro_gen import data as datasets
from pyro_gen.cli_spec import Evaluation, UsageError
from pyro_gen.data.batching import Transform, batch_calls, with_transform
from pyro_gen.infer import bits_per_dim_from_nats, evaluate_elbo, iwae_log_likelihood
from pyro_gen.infer.evaluation import module_device
from pyro_gen.infer.files import atomic_write_bytes
from pyro_gen.infer.program import program, trace_once


def _mean_se(values: torch.Tensor) -> tuple[float, float | None]:
    # one value has no standard error: None (JSON null), not NaN, which JSON cannot hold
    values = values.detach().double().flatten()
    se = float(values.std() / math.sqrt(len(values))) if len(values) > 1 else None
    return float(values.mean()), se


def with_se(results: dict[str, Any], name: str, values: torch.Tensor) -> None:
    results[name], results[f"{name}_se"] = _mean_se(values)


def report(results: dict[str, Any], path: Path) -> None:
    """Writes ``results`` to ``path`` as JSON and prints them, one ``name: value`` a line (an
    undefined standard error, of one test example, as ``n/a``)."""
    atomic_write_bytes(path, (json.dumps(results, indent=2) + "\n").encode())
    for key, value in results.items():
        if value is None:
            value = "n/a (one test example)"
        print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")


def samples_latents(model: torch.nn.Module, data: Any, transform: Transform | None = None) -> bool:
    """Whether the model, replayed against its guide on (two examples of) ``data``, has a
    latent site. Without one the ELBO is no bound but the exact log-likelihood (a flow on
    vectors); a dequantized flow's noise is a latent, so its ELBO bounds the discrete one.
    The trace leaves no state behind (see :func:`~pyro_gen.infer.program.trace_once`)."""
    call = with_transform(batch_calls(data, 2, shuffle=False).peek(), transform)
    _, model_trace = trace_once(program(model), call)
    return any(
        site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
        for site in model_trace.nodes.values()
    )


def bound_results(ev: Evaluation, discrete: bool, data: Any = None) -> dict[str, Any]:
    """Test ELBO and the importance-weighted estimate of log p(x) with ``--k`` samples, in
    nats per example (and bits/dim for discrete pixels, from the tighter of the two).
    ``data`` replaces the held-out tensor (a dict with a mask, for one). A model without
    latents (a flow on vectors) gets its exact ``test_log_likelihood`` instead of both, as
    :func:`density_results` gives it."""
    view = ev.view
    progress = not getattr(ev.args, "no_progress", False)
    data = view.x if data is None else data
    results: dict[str, Any] = {"num_test": int(view.x.shape[0])}
    elbo = evaluate_elbo(
        ev.model, data, transform=view.transform, per_example=True, progress=progress
    )
    if not samples_latents(ev.model, data, view.transform):
        # nothing to bound or to weight: the ELBO is log p(x) itself (an IWAE would repeat it)
        best = "test_log_likelihood"
        _log_likelihood(ev, results, elbo)
    else:
        with_se(results, "test_elbo", elbo)
        k = ev.args.k  # read only here: a model without latents refuses --k (evaluate_options)
        results["iwae_k"] = k
        iwae = iwae_log_likelihood(
            ev.model, data, num_samples=k, chunk=min(k, 500), transform=view.transform,
            per_example=True, progress=progress,
        )  # fmt: skip
        with_se(results, "iwae_log_likelihood", iwae)
        best = "iwae_log_likelihood"
    if view.levels is not None and discrete:
        dims = math.prod(view.event_shape)
        results["bits_per_dim"] = bits_per_dim_from_nats(results[best], dims)
    return results


def density_results(ev: Evaluation, log_prob: Any = None) -> dict[str, Any]:
    """Exact test log-likelihood (``model.log_prob``, or ``log_prob``) of 2D data, with
    KL(p_true || p_model) where the toy's density is known; for images, bits/dim by the
    probability-flow ODE on uniformly dequantized pixels."""
    view, model = ev.view, ev.model
    results: dict[str, Any] = {"num_test": int(view.x.shape[0])}
    x = view.x.to(module_device(model), torch.get_default_dtype())  # beside the model
    if view.levels is not None:
        from pyro_gen.diffusion import probability_flow_bits_per_dim

        levels = x.unsqueeze(-3)  # the model's channel
        bpd = probability_flow_bits_per_dim(model, levels, num_bins=view.levels, low=0.0,
                                            high=1.0, rtol=1e-4, atol=1e-4)  # fmt: skip
        with_se(results, "probability_flow_bits_per_dim", bpd)
        return results
    log_prob = log_prob or model.log_prob
    with torch.no_grad():
        lp = log_prob(x).cpu()
    _log_likelihood(ev, results, lp)
    return results


def _log_likelihood(ev: Evaluation, results: dict[str, Any], lp: torch.Tensor) -> None:
    """Adds the exact test log-likelihood ``lp`` (per example) and, on a toy whose density is
    known, KL(p_true || p_model) at the same points."""
    with_se(results, "test_log_likelihood", lp)
    try:
        truth = datasets.toy_log_prob(ev.config["data"], ev.view.x)
    except ValueError:  # images, or a toy without a closed-form density
        return
    with_se(results, "kl_true_to_model", truth.double() - lp.double().cpu())


def sample_quality(
    ev: Evaluation,
    samples: torch.Tensor,
    real: torch.Tensor,
    requested: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Classifier scores of image samples against as many real test images: the classifier
    (:func:`pyro_gen.metrics.train_classifier`) trains on the run's training split for
    ``--classifier-epochs``; the Frechet distance of as many training images to the test
    images is what a model that reproduced the data would reach at that sample count. With the
    labels ``requested`` of conditional samples, the share the classifier gives those labels."""
    from pyro_gen.cli_models import load_split
    from pyro_gen.metrics import label_agreement, train_classifier
    from pyro_gen.metrics import sample_quality as score

    config, view = ev.config, ev.view
    if real.shape[0] < 2:  # before the classifier's minutes of training
        raise UsageError(
            f"--num-test {real.shape[0]}: the Frechet distance compares the covariances of "
            "the test images' and the samples' features; give --num-test 2 or more"
        )
    x, y = load_split(config["data"], "train", config, None)  # all of it, whatever --subset
    unit = x.to(torch.get_default_dtype()) / (view.levels - 1)
    clf = train_classifier(unit, y, epochs=ev.args.classifier_epochs, seed=config["seed"])
    samples = samples.clamp(0, 1)
    quality = score(clf, samples, real, ev.labels)
    results = {
        "classifier_epochs": ev.args.classifier_epochs,
        "classifier_test_accuracy": quality.real_accuracy,
        "frechet_distance": quality.frechet,
        "frechet_distance_train_images": score(clf, unit[: real.shape[0]], real).frechet,
        "classes_covered": quality.classes_covered,
        "class_kl_to_uniform": quality.class_kl,
        "mean_confidence": quality.confidence,
    }
    if requested is not None:
        agreement = label_agreement(clf, samples, requested, draws=False)  # one per label
        results["label_agreement"], results["label_agreement_se"] = agreement
    return results


def mixture_results(samples: torch.Tensor, centers: torch.Tensor, std: float) -> dict[str, Any]:
    """Modes captured and the share of samples within 3 standard deviations of a mode, with
    its binomial standard error and the number of samples it was measured on (not the test
    examples: a GAN is scored by its own samples)."""
    from pyro_gen.metrics import mode_coverage

    cov = mode_coverage(samples, centers, std)
    n, p = int(samples.shape[0]), cov.high_quality
    return {
        "num_samples": n,
        "modes_captured": cov.modes,
        "num_modes": cov.num_modes,
        "high_quality_share": p,
        "high_quality_share_se": math.sqrt(p * (1 - p) / n),
    }
