"""The loop both evaluation estimators run: every batch of the data, in particle chunks, with
the modules in evaluation mode, no gradients, and an optional progress bar."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from tqdm.auto import tqdm

from pyro_gen.data.batching import TensorBatches, Transform, batch_calls, with_transform
from pyro_gen.data.random_state import rng_left_alone
from pyro_gen.infer.evaluation_scorer import ParticleScorer
from pyro_gen.infer.module_devices import modules_device
from pyro_gen.infer.module_modes import evaluation_mode
from pyro_gen.infer.pair_declarations import declared_plate
from pyro_gen.infer.program import program, trace_once
from pyro_gen.infer.program_checks import PlateSizeError, refuse_callable_data

__all__ = ["evaluation_mode", "score_batches", "widen"]

T = TypeVar("T")


def score_batches(
    model: Any,
    data: Any,
    *,
    guide: Callable | None,
    batch_size: int,
    num_particles: int,
    chunk: int,
    transform: Transform | None,
    plate_name: str | None,
    progress: bool,
    desc: str,
    reduce: Callable[[torch.Tensor, torch.Tensor], T],
    local_samples: int = 1,
    analytic_kl: bool = False,
    importance: bool = False,
) -> tuple[list[T], bool]:
    """Applies ``reduce(local (K, B), shared (K,))`` to every batch's log-weights; also says
    whether the model has sites outside the data plate. With ``local_samples`` M > 1 each
    particle's local log-weight is the log-mean-exp of M draws given its global latents."""
    refuse_callable_data(data)
    pair = program(model, guide)
    calls = batch_calls(
        data, batch_size, shuffle=False, device=modules_device(list(pair.modules.values()))
    )
    # One run finds the modules a plain function closes over (to switch their mode); it
    # and its transformed batch leave the RNG where it was.
    with rng_left_alone():
        _first_trace(pair, calls, transform)
    model_fn, guide_fn, modules = pair.model, pair.guide, list(pair.modules.values())
    chunks = range(0, num_particles, chunk)
    try:
        total = len(calls) * len(chunks) * local_samples
    except TypeError:
        total = None
    if plate_name is None:
        plate_name = declared_plate(model)
    scorer = ParticleScorer(model_fn, guide_fn, plate_name, analytic_kl, importance)
    results = []
    with torch.no_grad(), evaluation_mode(modules):
        bar = tqdm(total=total, desc=desc, unit="chunk", disable=not progress, leave=False)
        try:
            for index, call in enumerate(calls):
                # a batch the model or guide does not take: fit's error, naming the batch
                pair.check_call(call, index)
                call = with_transform(call, transform)
                if scorer.plate is None:
                    scorer.setup(call, _sliced_rows(calls))
                scorer.new_batch()
                parts = []
                for key, start in enumerate(chunks):
                    draws = []
                    for _ in range(local_samples):  # the chunk's global draws are replayed
                        draws.append(scorer.chunk(call, min(chunk, num_particles - start), key))
                        bar.update()
                    local = draws[0][0]
                    if local_samples > 1:
                        local = widen(torch.stack([d[0] for d in draws])).logsumexp(0)
                        local = local - math.log(local_samples)
                    parts.append((local, draws[0][1]))
                local = torch.cat([p[0] for p in parts])
                results.append(reduce(local, torch.cat([p[1] for p in parts])))
        finally:
            bar.close()
    if not results:
        raise ValueError("data yields no batches: there is nothing to evaluate")
    return results, scorer.has_shared


def _sliced_rows(calls: Any) -> tuple[int, int] | None:
    """``(rows per batch, examples)`` of tensor data cut into several batches, else None."""
    if isinstance(calls, TensorBatches) and len(calls) > 1:
        return min(calls.batch_size, calls.num_examples), calls.num_examples
    return None


def _first_trace(pair: Any, calls: Any, transform: Transform | None) -> None:
    """Runs model and guide on the first batch. A guide whose plate was sized to the full
    data (Pyro's AutoNormal, AutoDelta ... over local latents) is refused by the trace itself
    (:class:`~pyro_gen.infer.program_checks.PlateSizeError`). Where the run fails otherwise
    on a slice of tensor data that runs whole, the slicing is still the cause (per-example
    parameters outside any plate), and Pyro's shape error says nothing of batch_size."""
    first = calls.peek()  # once: a peek of the user's batch function calls it
    pair.check_call(first, 0)  # a batch they do not take: named before any run
    try:
        trace_once(pair, with_transform(first, transform))
    except PlateSizeError:
        raise  # says this itself, naming the plate and both sizes
    except Exception as error:
        if not isinstance(calls, TensorBatches) or len(calls) == 1:
            raise
        n = calls.num_examples
        whole = TensorBatches(calls.args, calls.kwargs, batch_size=n, shuffle=False)
        try:
            trace_once(pair, with_transform(whole.peek(), transform))
        except Exception:
            raise error from None
        raise ValueError(
            f"the model and guide fail on a batch of {calls.batch_size} of the {n} examples "
            f"but run on all of them ({type(error).__name__}: {str(error).splitlines()[0]}): "
            "the guide has parameters for each example of a local latent (a Pyro autoguide "
            f"built on the whole data), so it takes no batch of them. Pass batch_size={n} "
            "(or more), or have the model's data plate take the batch's indices "
            "(pyro.plate(name, size, subsample=idx))"
        ) from error


def widen(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float64 for summing over a whole data set (float32 loses digits there), or
    as it is on MPS, which has no float64."""
    return t if t.device.type == "mps" else t.to(torch.float64)
