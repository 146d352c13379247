"""How :class:`~pyro_gen.lightning.LightningSVI` gets a tensor Lightning can backpropagate
from each kind of Pyro loss (one that steps its own gradients, ``loss_and_grads``, through a
surrogate), and keeps a loss's own optimizers (an adversarial loss's discriminator
optimizer) on the module's device."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from pyro.infer import ELBO

from pyro_gen.data.batching import Call
from pyro_gen.infer.loss_value import reported_loss


def loss_mode(loss: Any) -> str:
    """How a step gets a differentiable loss from a Pyro loss: ``"differentiable"``
    (``differentiable_loss``), ``"callable"`` (``loss(model, guide, *args)`` returns it: an
    adversarial loss, ``EnergyDistance``) or ``"gradients"`` (``loss_and_grads`` only:
    :func:`loss_and_grads_surrogate`).

    Example:
        >>> from pyro.infer import RenyiELBO, Trace_ELBO
        >>> loss_mode(Trace_ELBO()), loss_mode(RenyiELBO())
        ('differentiable', 'gradients')
    """
    if hasattr(loss, "differentiable_loss"):
        return "differentiable"
    if callable(loss) and not isinstance(loss, ELBO):
        return "callable"
    if hasattr(loss, "loss_and_grads"):
        return "gradients"
    raise TypeError(
        f"loss must be a Pyro loss (an ELBO, a callable loss(model, guide, *args), or "
        f"an object with loss_and_grads), got {type(loss).__name__}"
    )


def loss_and_grads_surrogate(
    loss: Any,
    model: Any,
    guide: Any,
    call: Call,
    trained: Sequence[torch.Tensor],
    device: torch.device,
) -> torch.Tensor:
    """``loss.loss_and_grads(model, guide, ...)`` as a 0-dim tensor whose value is the loss
    and whose gradient in ``trained`` is the one Pyro computed.

    ``loss_and_grads`` leaves its gradient on the parameters: any gradient being accumulated
    (Lightning's ``accumulate_grad_batches``) is kept aside and put back, and the surrogate
    :math:`\\sum_i \\langle p_i, g_i \rangle` minus its own value, plus the loss, gives
    Lightning's backward pass exactly :math:`g_i`.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> from pyro.infer import Trace_ELBO
        >>> from pyro_gen.data.batching import as_call
        >>> pyro.clear_param_store()
        >>> def model():
        ...     loc = pyro.param("m", torch.tensor(1.0))
        ...     pyro.sample("x", dist.Normal(loc, 1.0), obs=torch.tensor(0.0))
        >>> def guide():
        ...     pass
        >>> m = pyro.param("m", torch.tensor(1.0)).unconstrained()
        >>> call = as_call(())
        >>> value = loss_and_grads_surrogate(Trace_ELBO(), model, guide, call, [m], m.device)
        >>> value.backward()
        >>> round(value.item(), 4), m.grad.item()  # -log N(0; 1, 1), its gradient in m
        (1.4189, 1.0)
    """
    held = [p.grad for p in trained]
    for p in trained:
        p.grad = None
    value = loss.loss_and_grads(model, guide, *call.args, **call.kwargs)
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in trained]
    for p, g in zip(trained, held, strict=True):
        p.grad = g
    surrogate = sum((p * g).sum() for p, g in zip(trained, grads, strict=True))
    # A loss of several terms (ReweightedWakeSleep) put every term's gradient on the
    # parameters; its value is reported by the model's term.
    value = torch.as_tensor(reported_loss(value), device=device)
    return surrogate - surrogate.detach() + value


def move_loss_optimizers(optimizers: Iterable[torch.optim.Optimizer], device: torch.device) -> None:
    """Moves the state of a loss's own optimizers to ``device``: a checkpoint restores it
    before Lightning moves the modules, so it would stay where it was saved. The step count
    stays where it is (Adam keeps it on the CPU unless it is fused or capturable).

    Example:
        >>> w = torch.nn.Parameter(torch.ones(2))
        >>> opt = torch.optim.Adam([w])
        >>> w.grad = torch.ones(2)
        >>> opt.step()
        >>> move_loss_optimizers([opt], torch.device("meta"))
        >>> opt.state[w]["exp_avg"].device.type, opt.state[w]["step"].device.type
        ('meta', 'cpu')
    """
    for opt in optimizers:
        for state in opt.state.values():
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and key != "step":
                    state[key] = value.to(device)
