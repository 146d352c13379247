"""The single entry point: names, splits and messages."""

from __future__ import annotations

import pytest

from pyro_gen.data import DATASETS, load

EXPECTED = {
    "mnist",
    "fashion_mnist",
    "digits",
    "eight_gaussians",
    "moons",
    "checkerboard",
    "rings",
    "spirals",
    "pinwheel",
}


def test_registry_is_complete() -> None:
    assert set(DATASETS) == EXPECTED


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError) as info:
        load("cifar10")
    assert "cifar10" in str(info.value)
    assert all(name in str(info.value) for name in EXPECTED)


@pytest.mark.parametrize("name", ["mnist", "digits", "moons"])
def test_bad_split(name: str) -> None:
    with pytest.raises(ValueError, match="'train', 'test'; got 'valid'"):
        load(name, "valid")


def test_names_are_normalized_and_root_is_ignored_by_toys(tmp_path) -> None:
    a, _ = load("Eight-Gaussians", root=tmp_path, num_samples=10)
    b, _ = load("eight_gaussians", num_samples=10)
    assert a.equal(b) and list(tmp_path.iterdir()) == []
