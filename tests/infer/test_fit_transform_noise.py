"""A stochastic transform (dynamic binarization) draws its noise only where training uses
it: the checks ``fit`` runs before training (the first batch's warm-up, the held-out data's
first batch) leave the RNG where they found it.

Checked against: a hand-written Pyro ``SVI`` loop that binarizes each batch itself (bit for
bit on the plain step); the same run without ``eval_data`` (bit for bit, plain and compiled);
and a run resumed from its checkpoint after one epoch (bit for bit). Before, the checks drew
binarization noise that training never used, so every trained parameter moved (by ~1e-2 in
three epochs) with whether held-out data was given, and a resumed run left a straight one.
"""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO

from pyro_gen.data.preprocessing import dynamic_binarize
from pyro_gen.infer import fit
from tests.infer.tiny_vae import TinyVAE

X = torch.rand(96, 6, generator=torch.Generator().manual_seed(0))
BATCH = 32


def batches():
    return (X[i : i + BATCH] for i in range(0, len(X), BATCH))


def trained(**kwargs) -> dict[str, torch.Tensor]:
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    vae = TinyVAE()
    fit(
        vae,
        batches,
        transform=dynamic_binarize,
        optim=pyro.optim.Adam({"lr": 0.01}),
        progress=False,
        **kwargs,
    )
    return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


def test_fit_binarizes_as_a_hand_written_svi_loop_does():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    vae = TinyVAE()
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    for _ in range(2):
        for x in batches():
            svi.step(dynamic_binarize(x))
    expected = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    got = trained(epochs=2, compile=False)
    assert sorted(got) == sorted(expected)
    for name, value in expected.items():
        assert torch.equal(got[name], value), name


@pytest.mark.parametrize("compile", [False, True])
def test_held_out_data_does_not_move_training(compile):
    alone = trained(epochs=3, compile=compile)
    evaluated = trained(epochs=3, compile=compile, eval_data=X[:16])
    for name, value in alone.items():
        assert torch.equal(evaluated[name], value), name


def test_a_resumed_run_with_held_out_data_is_the_straight_run(tmp_path):
    straight = trained(epochs=3, compile=False, eval_data=X[:16], checkpoint_dir=tmp_path / "a")
    trained(epochs=1, compile=False, eval_data=X[:16], checkpoint_dir=tmp_path / "b")
    resumed = trained(epochs=3, compile=False, eval_data=X[:16], checkpoint_dir=tmp_path / "b")
    for name, value in straight.items():
        assert torch.equal(resumed[name], value), name
