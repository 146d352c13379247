"""Every family's operations keep to the model's device, checked on the CPU.

On a GPU, a tensor the library creates without a device lands on the default device (the
CPU) and fails beside the model's CUDA tensors; no CPU test saw those defects until the CUDA
tier ran (``git log``: a density grid, ``evaluate``'s test set, a plate's indices). The
:class:`DefaultDeviceElsewhere` fixture emulates that situation on the CPU: the model and its
data are on the CPU, and every tensor created without an explicit device is marked as living
on another device, the "host". An operation that combines a host tensor with the model's
tensors raises, as CUDA would, under torch's rule: 0-dimensional host tensors mix with any
device (wrapped scalars). Host tensors keep their values, so reading values back to Python
(``.tolist()`` of a time grid, a loss) works as it does on a GPU, and their ``.device`` says
``meta``, so code that follows a host tensor's device stays on the host as it would on CUDA.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch.utils import _pytree as pytree
from torch.utils._device import DeviceContext, _device_constructors
from torch.utils.weak import WeakTensorKeyDictionary

HOST = torch.device("meta")  # what a host tensor reports as its device
_DEVICE_GET = torch.Tensor.device.__get__
_DATA_SET = torch.Tensor.data.__set__
# constructors that keep a tensor argument on its device
_ADOPTING = {torch.as_tensor, torch.asarray, torch.tensor}
# methods that move a tensor between devices: allowed to see both, and their result is
# placed where they move it
_MOVES = {torch.Tensor.to, torch.Tensor.cpu, torch.Tensor.copy_, torch.Tensor.type_as}

# questions about tensors that compute nothing (module.to asks one of old and new tensors)
_QUERIES = {torch._has_compatible_shallow_copy_type}
_COPIES = {torch.Tensor.__deepcopy__, torch.Tensor.__reduce_ex__}


class DeviceMixingError(RuntimeError):
    """A host tensor met the model's tensors in one operation."""


class DefaultDeviceElsewhere(DeviceContext):
    """The default device made a device of its own (the "host"), on the CPU.

    Pushed as torch's default-device context (with device ``meta``), so that
    ``torch.get_default_device()`` and every constructor without ``device=`` see the host;
    the tensors those constructors return are CPU tensors marked as host tensors, and every
    torch call checks that it does not combine a host tensor of one or more dimensions with
    the model's (unmarked) tensors. Results of calls on host tensors only are host tensors;
    ``.to(model_tensor.device)`` (or any unmarked device) moves a tensor to the model's
    device, ``.cpu()`` to the host.
    """

    def __init__(self) -> None:
        super().__init__(HOST)
        self.host = WeakTensorKeyDictionary()
        self._new_parameter = torch.nn.Parameter.__dict__["__new__"]  # the staticmethod
        self._from_numpy = torch.from_numpy

    def __enter__(self) -> DefaultDeviceElsewhere:
        # Two ways to make a tensor that torch functions do not see: a parameter is a new
        # tensor over its data's memory (on the host if the data is), and a tensor over a
        # numpy array's memory is on the host.
        new_parameter, from_numpy = self._new_parameter.__func__, self._from_numpy

        def host_parameter(cls: type, data: Any = None, requires_grad: bool = True) -> Any:
            p = new_parameter(cls, data, requires_grad)
            return self._mark(p) if data is not None and self.is_host(data) else p

        torch.nn.Parameter.__new__ = staticmethod(host_parameter)
        torch.from_numpy = lambda array: self._mark(from_numpy(array))
        super().__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)
        torch.nn.Parameter.__new__ = self._new_parameter
        torch.from_numpy = self._from_numpy

    def is_host(self, t: torch.Tensor) -> bool:
        return t in self.host

    def _mark(self, out: Any) -> Any:
        for t in _tensors(out):
            self.host[t] = True
        return out

    def _unmark(self, out: Any) -> Any:
        for t in _tensors(out):
            self.host.pop(t, None)
        return out

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: Any = None):
        kwargs = dict(kwargs or {})
        if torch.compiler.is_compiling():  # Inductor compiles a recorded program: no checks
            return func(*args, **kwargs)
        if func == _DEVICE_GET:
            return HOST if self.is_host(args[0]) else func(*args)
        if func in _device_constructors():
            return self._construct(func, args, kwargs)
        if func in _MOVES:
            return self._move(func, args, kwargs)
        if func in _QUERIES:
            return func(*args, **kwargs)
        if func == _DATA_SET:  # t.data = new: t is now where new is (module.to does this)
            func(*args, **kwargs)
            (self._mark if self.is_host(args[1]) else self._unmark)(args[0])
            return None
        if func in _COPIES:  # a copy of one tensor (its memo holds others): where it was
            out = func(*args, **kwargs)
            return self._mark(out) if self.is_host(args[0]) else out
        tensors = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        if not tensors:
            return func(*args, **kwargs)
        # torch's rule: every tensor but 0-dim CPU (here: host) tensors is on one device
        placed = [t for t in tensors if not (self.is_host(t) and t.dim() == 0)]
        host = [self.is_host(t) for t in placed]
        if any(host) and not all(host):
            raise DeviceMixingError(
                f"{_name(func)} combines host tensors of shapes "
                f"{[tuple(t.shape) for t, h in zip(placed, host) if h]} with the model's "
                f"tensors of shapes {[tuple(t.shape) for t, h in zip(placed, host) if not h]}"
            )
        out = func(*args, **kwargs)
        return self._mark(out) if all(host) and any(self.is_host(t) for t in tensors) else out

    def _construct(self, func: Any, args: tuple, kwargs: dict) -> Any:
        device = kwargs.get("device")
        if device is None and func in _ADOPTING and args and isinstance(args[0], torch.Tensor):
            return func(*args, **kwargs)  # as_tensor(t) keeps t where it is
        if device is not None and torch.device(device) != HOST:
            # on the model's device; as_tensor(t, device=...) may return t itself, moved
            return self._unmark(func(*args, **kwargs))
        kwargs["device"] = "cpu"
        return self._mark(func(*args, **kwargs))

    def _move(self, func: Any, args: tuple, kwargs: dict) -> Any:
        self_, rest = args[0], [*args[1:], *kwargs.values()]
        if func is torch.Tensor.copy_:
            return func(*args, **kwargs)  # the destination stays where it is
        if func is torch.Tensor.cpu:
            return self._mark(_fresh(self_, func(*args, **kwargs)))
        if func is torch.Tensor.type_as:  # to the other tensor's device
            out = func(*args, **kwargs)
            return self._mark(out) if self.is_host(rest[0]) else self._unmark(out)
        targets = [a for a in rest if isinstance(a, (torch.Tensor, torch.device, str))]
        targets = [a for a in targets if not (isinstance(a, str) and a not in _DEVICE_NAMES)]
        if not targets:  # .to(dtype): stays where it is
            out = func(*args, **kwargs)
            return self._mark(out) if self.is_host(self_) else out
        target = targets[0]
        to_host = (
            self.is_host(target)
            if isinstance(target, torch.Tensor)
            else torch.device(target) == HOST
        )
        if to_host:
            args = (self_, *(torch.device("cpu") if a is target else a for a in args[1:]))
            kwargs = {k: torch.device("cpu") if v is target else v for k, v in kwargs.items()}
            return self._mark(_fresh(self_, func(*args, **kwargs)))
        out = func(*args, **kwargs)
        # .to returns the tensor itself when it is already on the CPU: moved, it is no
        # longer a host tensor (module.to(device) keeps its parameters' identities)
        self._unmark(self_)
        return self._unmark(out)


_DEVICE_NAMES = {"cpu", "meta", "cuda"}


def _tensors(out: Any) -> list[torch.Tensor]:
    # results are tensors, or tuples of them (torch.return_types of sort, max, ... too)
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for item in out for t in _tensors(item)]
    return []


def _fresh(source: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    # a copy to the host is a new tensor on a GPU machine; .cpu() of a CPU tensor is itself
    return out.view_as(out) if out is source else out


def _name(func: Any) -> str:
    return getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or str(func)


@pytest.fixture
def elsewhere() -> Iterator[DefaultDeviceElsewhere]:
    """Runs the test with the default device made a device apart from the CPU model's."""
    context = DefaultDeviceElsewhere()
    with context:
        yield context


# ---------------------------------------------------------------------------------------
# helpers

MODEL_DEVICE = torch.device("cpu")
FELL_BACK = "compiled SVI step off"


def to_model(context: DefaultDeviceElsewhere, *things: Any) -> Any:
    """Modules and tensors built under the emulation (on the host), moved to the model's
    device as a user moves them to CUDA: ``.to(device)``; tensor attributes that are not
    parameters or buffers stay behind on the host, as they would on a GPU machine."""
    moved = [t.to(MODEL_DEVICE) for t in things]
    assert all(not context.is_host(t) for t in moved if isinstance(t, torch.Tensor))
    return moved[0] if len(moved) == 1 else moved


def on_model_device(context: DefaultDeviceElsewhere, *tensors: torch.Tensor) -> bool:
    """Every tensor is on the model's device (none on the host) and finite."""
    return all(
        not context.is_host(t) and t.device == MODEL_DEVICE and bool(torch.isfinite(t).all())
        for t in tensors
    )


def fit_both_ways(
    model: Any, data: Any, caplog: pytest.LogCaptureFixture, steps: int = 2, **kwargs: Any
) -> None:
    """fit with the compiled (recorded) step, which must not fall back to plain Pyro, whose
    recording would swallow a device error, and then with plain Pyro SVI."""
    from pyro_gen.infer import fit

    caplog.set_level(logging.INFO, logger="pyro_gen")
    for compile in (None, False):
        caplog.clear()
        result = fit(model, data, steps=steps, progress=False, compile=compile, **kwargs)
        assert all(math.isfinite(r["train_loss"]) for r in result.history)
        fell_back = [r.getMessage() for r in caplog.records if FELL_BACK in r.getMessage()]
        assert not fell_back, fell_back


# ---------------------------------------------------------------------------------------
# the emulation itself


def test_the_emulation_refuses_what_cuda_refuses_and_allows_what_it_allows(elsewhere):
    x = to_model(elsewhere, torch.ones(3))
    host = torch.arange(3.0)  # no device: the default device, here the host
    assert elsewhere.is_host(host) and host.device == HOST
    assert torch.get_default_device() == HOST
    with pytest.raises(DeviceMixingError, match="combines host tensors"):
        x + host
    with pytest.raises(DeviceMixingError):
        torch.cat([x, host])
    with pytest.raises(DeviceMixingError):  # indices drawn on the host (a plate's, say)
        x[torch.randperm(3)]
    # 0-dim host tensors are wrapped scalars; values read back to Python; explicit devices
    scalar = torch.tensor(2.0)
    assert on_model_device(elsewhere, x * scalar)
    assert host.tolist() == [0.0, 1.0, 2.0]
    assert elsewhere.is_host(torch.zeros(3, device=host.device))
    assert on_model_device(elsewhere, x + torch.zeros(3, device=x.device))
    assert elsewhere.is_host(x.cpu() * host) and not elsewhere.is_host(x)
    assert on_model_device(elsewhere, x + torch.zeros_like(x), x + host.to(x))
    assert torch.as_tensor(x) is x and not elsewhere.is_host(torch.as_tensor(x))


# ---------------------------------------------------------------------------------------
# the families, through the public API


@pytest.mark.parametrize(("prior", "guide"), [("normal", "normal"), ("vamp", "iaf")])
def test_vae_trains_evaluates_samples_and_imputes_on_the_models_device(
    elsewhere, caplog, prior, guide
):
    from pyro_gen.infer import evaluate_elbo, iwae_log_likelihood
    from pyro_gen.vae import active_units, build_vae, impute, missing_at_random

    vae = build_vae((8, 8), prior, guide, z_dim=4, hidden_dim=16, num_components=4)
    vae, x = to_model(elsewhere, vae, torch.rand(16, 8, 8).round())
    fit_both_ways(vae, x, caplog, batch_size=8)
    assert math.isfinite(evaluate_elbo(vae, x))
    assert math.isfinite(iwae_log_likelihood(vae, x, num_samples=3))
    mask = to_model(elsewhere, missing_at_random(x.shape, 0.5))
    imputed = impute(vae, x, mask, num_samples=4)
    assert on_model_device(elsewhere, vae.sample(3), imputed, active_units(vae, x[:1])[1])


def test_the_compiled_steps_accelerator_path_keeps_to_the_device(elsewhere, caplog, monkeypatch):
    """On CUDA the compiled step keeps its non-finite guard and the model's input checks in
    the recorded program (flags and held batches on the device); forced here on the CPU,
    as tests/infer/test_host_reads.py does."""
    import importlib

    from pyro_gen.infer.compiled import CompiledSVI
    from pyro_gen.vae import build_vae

    made: list[CompiledSVI] = []

    class OnDevice(CompiledSVI):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._flag_on_device = True  # what a CUDA device decides
            made.append(self)

    monkeypatch.setattr(importlib.import_module("pyro_gen.infer.fit_step"), "CompiledSVI", OnDevice)
    vae, x = to_model(elsewhere, build_vae((8, 8), z_dim=4, hidden_dim=16), torch.rand(16, 8, 8))
    # the first step is plain Pyro, the second records, the later ones replay
    fit_both_ways(vae, x.round(), caplog, steps=5, batch_size=4)
    programs = [p for svi in made for p in svi._programs.values()]
    assert programs and all(p.flag_on_device and p.guarded for p in programs)


def test_bayesian_vae_trains_and_samples_on_the_models_device(elsewhere, caplog):
    from pyro_gen.vae import BayesianVAE

    # built on the host and moved: the weights' prior and the guide's initial values too
    vae = BayesianVAE((8, 8), z_dim=4, hidden_dims=(16,), num_data=16)
    vae, x = to_model(elsewhere, vae, torch.rand(16, 8, 8).round())
    fit_both_ways(vae, x, caplog, batch_size=8)
    samples = vae.sample(3, num_decoders=2)
    assert samples.shape == (2, 3, 8, 8) and on_model_device(elsewhere, samples)


@pytest.mark.parametrize("name", ["realnvp", "maf", "nsf", "glow"])
def test_flow_trains_scores_and_samples_on_the_models_device(elsewhere, caplog, name):
    from pyro_gen.flows import build
    from pyro_gen.infer import iwae_log_likelihood

    if name == "glow":
        flow = build("glow", (8, 8), num_levels=1, hidden_channels=8, num_blocks=1)
        x = (torch.rand(16, 8, 8) * 16).round() / 16
    else:
        flow, x = build(name, (2,), num_layers=2), torch.randn(16, 2)
    flow, x = to_model(elsewhere, flow, x)
    fit_both_ways(flow, x, caplog, batch_size=8)
    assert math.isfinite(iwae_log_likelihood(flow, x, num_samples=2))
    assert on_model_device(elsewhere, flow.log_prob(x), flow.sample(3))


def _image_ddpm() -> Any:
    from pyro_gen.diffusion import build_ddpm

    # 5 x 5 pixels on 17 levels: a U-Net of one level, the smallest image network
    return build_ddpm((5, 5), timesteps=8, base_channels=8, num_bins=17)


def test_ddpm_trains_bounds_and_samples_on_the_models_device(elsewhere, caplog):
    from pyro.infer import TraceMeanField_ELBO

    from pyro_gen.diffusion import (
        ancestral_sample,
        ddim_sample,
        probability_flow_bits_per_dim,
        probability_flow_decoder_bound,
        sampled_variational_bound,
        variational_bound,
    )
    from pyro_gen.infer import evaluate_elbo

    ddpm, x = to_model(elsewhere, _image_ddpm(), (torch.rand(16, 5, 5) * 16).round() / 16)
    fit_both_ways(ddpm, x, caplog, batch_size=8, loss=TraceMeanField_ELBO())
    assert math.isfinite(evaluate_elbo(ddpm, x, loss=TraceMeanField_ELBO()))
    drawn = [ancestral_sample(ddpm, 2), ddim_sample(ddpm, 2, steps=3, eta=1.0)]
    assert on_model_device(elsewhere, *drawn)
    for bound in (variational_bound(ddpm, x[:2]), sampled_variational_bound(ddpm, x[:2])):
        assert on_model_device(elsewhere, bound["total"], bound["bits_per_dim"])
    ode = {"rtol": 0.1, "atol": 0.1}
    bpd = probability_flow_bits_per_dim(ddpm, x[:2], num_bins=17, **ode)
    decoder = probability_flow_decoder_bound(ddpm, x[:2], num_bins=17, **ode)
    assert on_model_device(elsewhere, bpd, *decoder.values())


def _score_model(sde: str) -> Any:
    from pyro_gen.diffusion import LearnedVPSDE, ScoreModel, make_sde
    from pyro_gen.nn import TimeMLP

    if sde == "learned":  # trains the continuous-time bound; its coefficients jump
        return ScoreModel(
            TimeMLP(2, 16), LearnedVPSDE(bins=4), (2,), bound=True, weighting="likelihood"
        )
    return ScoreModel(TimeMLP(2, 16), make_sde(sde), (2,))


# the samplers' knobs other than steps, at their cheapest
_FEW_STEPS = {"langevin": {"steps_per_level": 2}, "ode": {"rtol": 1e-2, "atol": 1e-2}}


@pytest.mark.parametrize("kind", ["ddpm", "vp", "learned"])
def test_score_samplers_and_likelihoods_on_the_models_device(elsewhere, caplog, kind):
    """Every score-based sampler and the probability-flow likelihood, for a DDPM (read as a
    score model, its SDE interpolating the schedule's buffers) and for score models of an
    analytic SDE and of a learned one."""
    from pyro.infer import TraceMeanField_ELBO

    from pyro_gen.diffusion import (
        SAMPLERS,
        build_ddpm,
        likelihood_bound,
        probability_flow_log_prob,
        sample,
    )

    if kind == "ddpm":
        model, loss = build_ddpm((2,), timesteps=8, hidden_dim=16), TraceMeanField_ELBO()
    else:
        model, loss = _score_model(kind), None
    model, x = to_model(elsewhere, model, torch.randn(16, 2))
    fit_both_ways(model, x, caplog, batch_size=8, loss=loss)
    drawn = [sample(model, 2, name, steps=3, **_FEW_STEPS.get(name, {})) for name in SAMPLERS]
    log_p = probability_flow_log_prob(model, x[:2], rtol=1e-2, atol=1e-2)
    assert on_model_device(elsewhere, *drawn, log_p)
    if kind != "ddpm":
        assert on_model_device(elsewhere, *likelihood_bound(model, x[:2], time_samples=2).values())


def test_flow_matching_trains_samples_and_scores_on_the_models_device(elsewhere, caplog):
    from pyro_gen.diffusion import FlowMatching, reflow_pairs
    from pyro_gen.flows import build

    fm = FlowMatching(build("cnf", (2,), hidden_dims=(16,)), time_sampling="logit_normal")
    fm, x = to_model(elsewhere, fm, torch.randn(16, 2))
    fit_both_ways(fm, x, caplog, batch_size=8)
    assert on_model_device(elsewhere, fm.sample(2), fm.log_prob(x[:2]), *reflow_pairs(fm, 2))


@pytest.mark.parametrize("loss", ["NonSaturatingGAN", "WassersteinGP"])
def test_gan_trains_and_samples_on_the_models_device(elsewhere, caplog, loss):
    import pyro_gen.gan
    from pyro_gen.nn import MLPDiscriminator, MLPGenerator

    generator = pyro_gen.gan.Generator(MLPGenerator(4, (2,), (16, 16)))
    adversarial = getattr(pyro_gen.gan, loss)(MLPDiscriminator((2,), (16, 16)))
    generator, adversarial, x = to_model(elsewhere, generator, adversarial, torch.randn(16, 2))
    fit_both_ways(generator, x, caplog, batch_size=8, loss=adversarial)
    assert on_model_device(elsewhere, generator.sample(3))


def test_metrics_on_the_models_device(elsewhere):
    from pyro_gen.metrics import (
        frechet_distance,
        label_agreement,
        mode_coverage,
        ring_modes,
        sample_modes,
        sample_quality,
        train_classifier,
    )

    centers = to_model(elsewhere, ring_modes())
    x = sample_modes(centers, 0.05, 200)
    assert on_model_device(elsewhere, x)
    coverage = mode_coverage(x, centers, 0.05, min_count=5)
    assert coverage.modes == 8 and on_model_device(elsewhere, coverage.counts)
    images, labels = to_model(elsewhere, torch.rand(32, 8, 8), torch.randint(0, 10, (32,)))
    clf = train_classifier(images, labels, epochs=1, batch_size=16)
    score = sample_quality(clf, images[:16], images[16:], labels[16:])
    agreement = label_agreement(clf, images, labels)
    features = to_model(elsewhere, torch.randn(20, 3), torch.randn(20, 3))
    values = [score.frechet, score.confidence, *agreement, frechet_distance(*features)]
    assert all(math.isfinite(v) for v in values)


# ---------------------------------------------------------------------------------------
# the command line: the model built on the host, moved by fit(device=...), then loaded back

TOY = ["--toy-samples", "128", "--batch-size", "64"]
DIGITS = ["--subset", "64", "--test-subset", "16", "--batch-size", "32"]
CLI_RUNS = [
    # a diffusion model, its figures and the DDIM sampler
    ("ddpm", "moons", [*TOY, "--timesteps", "8"], ["sample", "--sampler", "ddim", "--steps", "2"]),
    # an adversarial loss scored on held-out images each epoch; the images' evaluation
    ("cgan", "digits", [*DIGITS, "--z-dim", "4", "--hidden-dim", "16"],
     ["evaluate", "--num-test", "32", "--classifier-epochs", "1"]),
    # labels as a discrete latent: the test error of the classifier it is
    ("ssvae", "digits", [*DIGITS, "--labels", "20", "--z-dim", "4", "--hidden-dim", "16"],
     ["evaluate"]),
    # missing pixels, the IWAE objective, and imputation
    ("vae", "digits",
     [*DIGITS, "--z-dim", "4", "--hidden-dim", "16", "--missing-rate", "0.5", "--objective",
      "iwae", "--k", "2"],
     ["impute", "--k", "2"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("model", "data", "options", "then"), CLI_RUNS, ids=[run[0] for run in CLI_RUNS]
)
def test_the_command_line_keeps_to_the_device(elsewhere, tmp_path, model, data, options, then):
    from pyro_gen.cli import main

    run = tmp_path / "run"
    train = ["train", model, "--data", data, "--out", str(run), "--device", "cpu", "--no-progress"]
    assert main([*train, "--epochs", "1", *options]) == 0
    command, *rest = then
    out = ["--out", str(tmp_path / "out.png")] if command == "sample" else []
    assert main([command, str(run), "--device", "cpu", *rest, *out]) == 0
