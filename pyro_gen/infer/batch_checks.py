"""How ``fit``'s batches meet the model's data plate.

``fit`` cuts tensor data along their first dimension into batches (or takes the user's).
Three ways a model can disagree with that, which Pyro would let pass: its data plate is not
over that first dimension (time-major sequences), which is refused; it has global latents
while the plate has the batch's size, which scales the prior against one batch; or it
observes nothing of the batch (``model(x, y=None)`` given ``x`` alone). The last two are
warned about: valid objectives, if rarely meant.
"""

from __future__ import annotations

import warnings

from pyro import poutine
from pyro.poutine.indep_messenger import CondIndepStackFrame

from pyro_gen.data.batch_call import Call, describe
from pyro_gen.infer.log_weights import DataPlate, find_data_plate, sample_sites
from pyro_gen.infer.program_checks import latent_sites

__all__ = [
    "NothingObservedWarning",
    "UnscaledBatchWarning",
    "check_sliced_dimension",
    "warn_nothing_observed",
    "warn_unscaled_batches",
]


def _data_plate_frames(
    model_trace: poutine.Trace, plate_name: str | None
) -> tuple[DataPlate, list[CondIndepStackFrame]] | None:
    """The data plate and its frames at every sample site (one per site it encloses); None
    when the model has no single data plate."""
    try:
        plate = find_data_plate(model_trace, plate_name)
    except ValueError:
        return None
    frames = [
        f
        for _, site in sample_sites(model_trace)
        for f in site["cond_indep_stack"]
        if f.name == plate.name
    ]
    return (plate, frames) if frames else None


def check_sliced_dimension(
    model_trace: poutine.Trace, plate_name: str | None, batch_rows: int | None
) -> None:
    """Refuses tensor data whose first dimension, the one ``fit`` cuts into batches, is not
    the model's data plate: on a batch of ``batch_rows`` rows the plate has another size.

    Time-major sequences (``(T, N, D)``, PyTorch's RNN default) were cut into spans of
    time steps, each trained on as if it were a batch of examples.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> def model(x):  # x: (T, N), the plate over N
        ...     with pyro.plate("sequences", x.shape[1]):
        ...         pyro.sample("x", dist.Normal(0.0, 1.0).expand([x.shape[0], x.shape[1]])
        ...                     .to_event(0), obs=x)
        >>> trace = pyro.poutine.trace(model).get_trace(torch.zeros(8, 30))
        >>> check_sliced_dimension(trace, None, 8)
        Traceback (most recent call last):
        ...
        ValueError: fit cuts tensor data along their first dimension, and this batch has 8 ...
    """
    found = _data_plate_frames(model_trace, plate_name)
    if found is None or batch_rows is None:
        return
    plate, frames = found
    size = plate_size_off_rows(frames, batch_rows)
    if size is None:
        return
    raise ValueError(
        f"fit cuts tensor data along their first dimension, and this batch has {batch_rows} "
        f"rows, but the model's data plate {plate.name!r} has size {size} on it: the "
        "examples are not the first dimension (time-major sequences?). Put the examples "
        "first (e.g. x.transpose(0, 1)), or pass your own batches (an iterable)"
    )


class UnscaledBatchWarning(UserWarning):
    """Batches of a model with global latents are not scaled up to the data set."""


def warn_unscaled_batches(
    model_trace: poutine.Trace, plate_name: str | None, examples: int | None, sliced: bool = True
) -> None:
    """Warns where ``fit`` trains on batches of a data set of ``examples`` examples a model
    whose data plate has the batch's size (``pyro.plate("data", len(x))``) while latents lie
    outside it.

    Each step's ELBO then weighs the globals' prior against one batch, not the data set:
    the posterior found is that of :math:`B` examples, too wide by about
    :math:`\\sqrt{N/B}`. Pyro scales a batch by :math:`N/B` when the plate is told the full
    size, ``pyro.plate("data", N, subsample_size=B)``, as its ``svi_lightning`` example
    does. A model of local latents only is not concerned (the scale changes the loss, not
    its optimum), nor one whose plate subsamples already. ``sliced``: ``fit`` cuts the
    batches itself (tensor data), so ``batch_size=`` is the other way out.

    Example:
        >>> import warnings, pyro, pyro.distributions as dist, torch
        >>> def model(x):
        ...     w = pyro.sample("w", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", x.shape[0]):
        ...         pyro.sample("x", dist.Normal(w, 1.0), obs=x)
        >>> trace = pyro.poutine.trace(model).get_trace(torch.zeros(10))
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     warn_unscaled_batches(trace, None, examples=100)
        >>> str(caught[0].message)[:60]
        "the model has latents outside its data plate 'data' ('w'), a"
    """
    found = _data_plate_frames(model_trace, plate_name)
    if examples is None or found is None:
        return
    plate, frames = found
    if any(f.full_size not in (None, f.size) for f in frames):  # subsampled already
        return
    size = frames[0].size
    if size >= examples:
        return
    outside = [
        name
        for name, site in latent_sites(model_trace).items()
        if not site["infer"].get("_deterministic", False)
        and all(f.name != plate.name for f in site["cond_indep_stack"])
    ]
    if not outside:
        return
    named = ", ".join(repr(n) for n in outside[:3]) + (", ..." if len(outside) > 3 else "")
    warnings.warn(
        f"the model has latents outside its data plate {plate.name!r} ({named}), and that "
        f"plate has the batch's size ({size}) while fit draws batches from {examples} "
        "examples: each step weighs their prior against one batch, so the posterior found "
        f"is that of {size} examples. Give the plate the full size, "
        f"pyro.plate({plate.name!r}, {examples}, subsample_size=len(batch)), so that Pyro "
        "scales a batch by N/B, or "
        + (f"pass batch_size={examples}" if sliced else "give all the examples in one batch"),
        UnscaledBatchWarning,
        stacklevel=3,
    )


class NothingObservedWarning(UserWarning):
    """The model observed nothing on the first batch: training fits the guide to the prior.

    Filter it where that is meant, as for any warning.

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("error", NothingObservedWarning)
        ...     try:
        ...         warnings.warn("observed nothing", NothingObservedWarning)
        ...     except UserWarning as w:
        ...         print(type(w).__name__)
        NothingObservedWarning
    """


def warn_nothing_observed(model_trace: poutine.Trace, call: Call) -> None:
    """Warns when the model's run on the batch ``call`` has latent sites and no observed
    one: no ``obs=``, no ``pyro.factor``. Its ELBO is then free of the data, and the guide
    is trained towards the prior, which Pyro's SVI does without a word. The usual cause is
    an observation left out of the batch: a regression ``model(x, y=None)`` given ``x``
    alone samples ``y`` as one more latent. A model given no tensors is left alone: a
    target density written as latents (``fit(model, ())``) observes nothing by design.

    Example:
        >>> import warnings, pyro, pyro.distributions as dist, torch
        >>> def model(x, y=None):
        ...     with pyro.plate("data", x.shape[0]):
        ...         pyro.sample("y", dist.Normal(x, 1.0), obs=y)
        >>> trace = pyro.poutine.trace(model).get_trace(torch.zeros(3))
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     warn_nothing_observed(trace, Call((torch.zeros(3),)))
        >>> str(caught[0].message)[:72]
        "the model observed nothing on the first batch (1 positional; latent 'y')"
    """
    latent = list(latent_sites(model_trace))
    # pyro.deterministic records an observed site too: it observes nothing of the data
    if not (call.tensors() and latent) or any(
        s["is_observed"] and not s["infer"].get("_deterministic", False)
        for _, s in sample_sites(model_trace)
    ):
        return
    named = ", ".join(repr(n) for n in latent[:3]) + (", ..." if len(latent) > 3 else "")
    warnings.warn(
        f"the model observed nothing on the first batch ({describe(call)}; latent {named}): "
        "with no obs= site and no pyro.factor, its ELBO does not depend on the data, and "
        "training fits the guide to the prior. Pass the observations with the batch (a "
        "model(x, y=None) needs data=(x, y)), or observe the data with obs= in the model",
        NothingObservedWarning,
        stacklevel=3,
    )


def plate_size_off_rows(frames: list[CondIndepStackFrame], rows: int) -> int | None:
    """The data plate's size on a batch of ``rows`` rows when that plate is not over the
    rows (None when it is, or cannot tell): ``frames`` are the plate's frames at every site.

    A plate over the batch's rows, or subsampling them (a model that draws its own examples
    from the batch it is given), passes; so does a plate without a size (-1 takes each
    site's) or of several sizes.

    Example:
        >>> from types import SimpleNamespace as Frame
        >>> plate_size_off_rows([Frame(size=3, full_size=None)], rows=5)
        3
        >>> plate_size_off_rows([Frame(size=2, full_size=5)], rows=5) is None  # subsampled
        True
    """
    sizes = {f.size for f in frames}
    if len(sizes) != 1 or rows in sizes or any(f.full_size == rows for f in frames):
        return None
    size = sizes.pop()
    return None if size in (None, -1) else size
