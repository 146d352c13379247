"""The generator's weight average: the closed-form recursion, what samples use, and a
checkpointed run that resumes exactly."""

from __future__ import annotations

import pyro
import pytest
import torch
from torch import nn

from pyro_gen.gan import ExponentialAverage, Generator, NonSaturatingGAN
from pyro_gen.infer import fit
from pyro_gen.nn import MLPDiscriminator, MLPGenerator


def test_the_average_follows_the_warmed_up_recursion():
    net = nn.Linear(3, 2)
    avg = ExponentialAverage(net, decay=0.9)
    expected = [p.detach().clone().double() for p in net.parameters()]
    g = torch.Generator().manual_seed(0)
    for t in range(1, 40):
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
        avg.update(net)
        beta = min(0.9, (1 + t) / (10 + t))  # warm-up first, then the decay itself
        params = [p.detach().double() for p in net.parameters()]
        expected = [beta * e + (1 - beta) * p for e, p in zip(expected, params)]
    for a, e in zip(avg.module.parameters(), expected):
        torch.testing.assert_close(a.double(), e, rtol=1e-5, atol=1e-6)
        assert not a.requires_grad


def test_bad_decay_and_a_generator_without_an_average_are_refused():
    with pytest.raises(ValueError, match="decay must be in"):
        ExponentialAverage(nn.Linear(1, 1), decay=1.0)
    with pytest.raises(ValueError, match="average=0.999"):
        Generator(MLPGenerator(2, (2,), (8,))).update_average()


def test_a_source_of_other_shapes_or_dtype_is_one_error_naming_the_parameter():
    # torch's "The size of tensor a (2) must match ..." / "expected dtype float for `end`"
    avg = ExponentialAverage(nn.Linear(2, 3))
    with pytest.raises(ValueError, match=r"'weight' of the average has shape \(3, 2\).*\(2, 3\)"):
        avg.update(nn.Linear(3, 2))
    net = nn.Linear(2, 3)
    avg = ExponentialAverage(net)
    net.double()  # a user's network converted after its average was built
    with pytest.raises(ValueError, match=r"torch.float32 on cpu.*torch.float64.*average.to"):
        avg.update(net)
    assert int(avg.num_updates) == 0  # a refused update counts for nothing
    avg.to(torch.float64).update(net)  # the repair the error names
    assert int(avg.num_updates) == 1


def test_samples_and_the_eval_model_use_the_average_while_training_uses_the_network():
    pyro.set_rng_seed(0)
    gen = Generator(MLPGenerator(2, (2,), (8,)), average=0.5)
    gen.update_average()  # an average (of the initial weights); before any, there is none
    with torch.no_grad():
        for p in gen.net.parameters():
            p.add_(1.0)  # the network moves; the average has not been updated since
    z = torch.randn(5, 2)
    averaged = gen.average.module[0](z)
    pyro.set_rng_seed(1)
    samples = gen.sample(5)
    pyro.set_rng_seed(1)
    torch.testing.assert_close(samples, gen.average.module[0](torch.randn(5, 2)))
    assert not torch.allclose(averaged, gen.net(z))
    for mode, net in ((True, gen.net), (False, gen.average.module[0])):
        gen.train(mode)
        tr = pyro.poutine.trace(gen.model).get_trace(num_samples=5)
        torch.testing.assert_close(tr.nodes["x"]["value"], net(tr.nodes["z"]["value"]))


def test_fit_with_the_average_resumes_exactly(tmp_path):
    data = torch.randn(64, 2) + 3.0

    def run(steps: int, directory=None, seed: int = 0) -> dict[str, torch.Tensor]:
        pyro.clear_param_store()
        pyro.set_rng_seed(seed)
        gen = Generator(MLPGenerator(2, (2,), (16,)), average=0.9)
        loss = NonSaturatingGAN(MLPDiscriminator((2,), (16,)))
        optim = pyro.optim.Adam({"lr": 1e-2, "betas": (0.5, 0.999)})
        fit(gen, data, steps=steps, batch_size=16, loss=loss, optim=optim, progress=False,
            checkpoint_dir=directory, step_callbacks=[gen.update_average])  # fmt: skip
        return {k: v.clone() for k, v in gen.state_dict().items()}

    straight = run(10)
    run(6, tmp_path)
    resumed = run(10, tmp_path, seed=1)
    assert int(resumed["average.num_updates"]) == 10
    assert any(k.startswith("average.module.") for k in resumed)
    for k in straight:
        torch.testing.assert_close(resumed[k], straight[k], rtol=0, atol=0, msg=k)
