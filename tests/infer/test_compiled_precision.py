"""Mixed precision in the compiled step: networks in bfloat16, log-densities and the loss in
float32, the same loss and gradients as float32 within bfloat16's resolution."""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO

from pyro_gen.infer.compiled import CompiledSVI
from tests.infer.test_host_reads import MODELS


def _vae() -> tuple[torch.nn.Module, torch.Tensor]:
    module, _, x = MODELS["vae"]()
    return module, x


def _realnvp() -> tuple[torch.nn.Module, torch.Tensor]:
    flow, _, x = MODELS["realnvp"]()
    with torch.no_grad():  # the couplings start as the identity: move them off it
        for p in flow.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return flow, x


def _loss_and_grads(module, x, precision):
    svi = CompiledSVI(
        module.model, module.guide, pyro.optim.Adam({}), Trace_ELBO(), mixed_precision=precision
    )
    svi.loss_and_grads(x)  # a new input signature: a plain step, which records nothing
    for p in svi.parameters():
        p.grad = None
    pyro.set_rng_seed(1)  # the same noise for both precisions
    loss = svi.loss_and_grads(x)
    grads = torch.cat([p.grad.reshape(-1) for p in svi.parameters()])
    for p in svi.parameters():
        p.grad = None
    return svi, loss, grads


@pytest.mark.parametrize("make", [_vae, _realnvp], ids=["vae", "realnvp"])
def test_bfloat16_networks_give_the_float32_loss_and_gradients(make):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    module, x = make()
    _, loss32, grads32 = _loss_and_grads(module, x, None)
    svi, loss16, grads16 = _loss_and_grads(module, x, torch.bfloat16)
    assert svi.compiled
    (prog,) = svi._programs.values()
    casts = [n for n in prog.gm.graph.nodes if n.kwargs.get("dtype") == torch.bfloat16]
    assert casts  # the networks did run in bfloat16
    assert loss16.dtype == torch.float32 and grads16.dtype == torch.float32
    # bfloat16 keeps 8 significant bits (0.4%) per network output; measured: 2e-5 (VAE)
    # and 4e-4 (RealNVP) of the loss, gradients at cosine 0.99999.
    assert abs(loss16 - loss32) <= 2e-3 * abs(loss32), (loss16, loss32)
    cosine = torch.nn.functional.cosine_similarity(grads16, grads32, dim=0)
    assert cosine > 0.999, cosine
    assert not torch.equal(loss16, loss32)  # not the float32 program again


def test_log_densities_stay_float32():
    """The Bernoulli log-density reads the decoder's logits as float32, not bfloat16."""
    pyro.clear_param_store()
    module, x = _vae()
    svi, _, _ = _loss_and_grads(module, x, torch.bfloat16)
    (prog,) = svi._programs.values()
    bce = [
        n
        for n in prog.gm.graph.nodes
        if "binary_cross_entropy_with_logits" in str(n.target) and "backward" not in str(n.target)
    ]
    assert bce and all(n.meta["val"].dtype == torch.float32 for n in bce)
    assert all(a.meta["val"].dtype == torch.float32 for n in bce for a in n.args[:2])


def test_float16_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="mixed_precision must be None or torch.bfloat16"):
        CompiledSVI(lambda x: None, lambda x: None, mixed_precision=torch.float16)
