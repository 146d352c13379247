"""Every distribution and prior module of ``pyro_gen.distributions`` is importable from the
package itself, where a user looks for it (``from pyro_gen.distributions import
GaussianMixture`` failed: it was exported only by ``pyro_gen.vae``), and the VAE family's
re-exports are the same objects."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import torch

import pyro_gen.distributions as D
import pyro_gen.vae as V


def _public_classes() -> dict[str, type]:
    """The public distribution and module classes defined in the package's files."""
    found = {}
    for info in pkgutil.iter_modules(D.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{D.__name__}.{info.name}")
        for name, obj in vars(module).items():
            if (
                inspect.isclass(obj)
                and obj.__module__ == module.__name__
                and not name.startswith("_")
                and issubclass(obj, torch.distributions.Distribution | torch.nn.Module)
            ):
                found[name] = obj
    return found


def test_every_distribution_and_prior_module_is_exported_by_the_package():
    classes = _public_classes()
    # the files do define the classes users reach for (a broken walk would pass vacuously)
    assert {"GaussianMixture", "MixturePrior", "VampPrior", "FlowDistribution"} <= set(classes)
    missing = sorted(set(classes) - set(D.__all__))
    assert not missing, f"defined in pyro_gen.distributions but not exported: {missing}"
    for name, cls in classes.items():
        assert getattr(D, name) is cls


def test_the_vae_reexports_are_the_distributions_own_classes():
    for name in ("GaussianMixture", "MixturePrior", "VampPrior"):
        assert name in V.__all__
        assert getattr(V, name) is getattr(D, name)
