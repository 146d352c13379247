"""The user's own batches as ``IterableBatches`` reads them: every tensor of a batch moved
to the training device, the examples a ``DataLoader``'s sampler draws from, and where a
loader draws its order from a generator of its own.

What each check is against: the tensors' devices (``meta`` stands for an accelerator on a
machine without one); the sizes of the datasets and splits built here; the generator put
where the loader is built.
"""

from __future__ import annotations

from collections import namedtuple

import pytest
import torch
from torch.nn.utils.rnn import pack_sequence
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    RandomSampler,
    SubsetRandomSampler,
    TensorDataset,
)

from pyro_gen.data.batching import IterableBatches, as_call, own_generator

META = torch.device("meta")
Pair = namedtuple("Pair", "tokens lengths")


def test_every_tensor_of_a_batch_goes_to_the_device() -> None:
    """A collate_fn's nested values (a dict of conditions, a list of sequences, a namedtuple)
    stayed on the host while the top-level tensors moved: the model failed on the device."""
    batch = {
        "x": torch.zeros(4, 2),
        "cond": {"label": torch.arange(4), "source": "scan"},
        "sequences": [torch.ones(3), torch.ones(2)],
        "pair": Pair(torch.ones(4, 5), [5, 5, 4, 1]),
        "packed": pack_sequence([torch.ones(3), torch.ones(2)]),
    }
    call = as_call(batch, META)
    # a PackedSequence keeps its batch_sizes on the host, as torch's .to() does
    moved = [t for t in call.tensors() if t is not call.kwargs["packed"].batch_sizes]
    assert len(moved) == 6 and all(t.device == META for t in moved)
    # the containers and the values that are not tensors are as the user made them
    assert call.kwargs["cond"]["source"] == "scan" and call.kwargs["pair"].lengths == [5, 5, 4, 1]
    assert isinstance(call.kwargs["pair"], Pair) and isinstance(call.kwargs["sequences"], list)
    assert call.size == 4
    # tuples positionally, as a DataLoader over (x, [names]) gives them
    nested = as_call((torch.zeros(3), (torch.ones(3), ["a", "b", "c"])), META)
    assert nested.args[1][0].device == META and nested.args[1][1] == ["a", "b", "c"]


def test_a_class_of_the_users_own_is_theirs_to_move() -> None:
    class Batch(dict):
        pass

    inner = torch.zeros(2)
    assert as_call((Batch(x=inner),), META).args[0]["x"] is inner


DATASET = TensorDataset(torch.zeros(24, 2))


@pytest.mark.parametrize(
    ("loader", "examples"),
    [
        (DataLoader(DATASET, 8, shuffle=True), 24),
        (DataLoader(DATASET, 8, sampler=SubsetRandomSampler(range(12))), 12),
        (
            DataLoader(
                DATASET, batch_sampler=BatchSampler(SubsetRandomSampler(range(6)), 4, False)
            ),
            6,
        ),
        (
            DataLoader(
                DATASET,
                batch_size=None,
                sampler=BatchSampler(SubsetRandomSampler(range(9)), 4, False),
            ),
            9,
        ),
    ],
)
def test_the_examples_are_those_the_sampler_draws_from(loader: DataLoader, examples: int) -> None:
    """A train split (torch's SubsetRandomSampler recipe) was counted as the whole dataset."""
    assert IterableBatches(loader).num_examples == examples


def _seeded() -> torch.Generator:
    return torch.Generator().manual_seed(0)


@pytest.mark.parametrize(
    ("loader", "where"),
    [
        (DataLoader(DATASET, 8, shuffle=True), None),
        (DataLoader(DATASET, 8, shuffle=True, generator=_seeded()), "its generator= argument"),
        (
            DataLoader(DATASET, 8, sampler=SubsetRandomSampler(range(12), generator=_seeded())),
            "its sampler's generator",
        ),
        (
            DataLoader(
                DATASET,
                batch_sampler=BatchSampler(RandomSampler(DATASET, generator=_seeded()), 4, False),
            ),
            "its batch_sampler's sampler's generator",
        ),
        (
            DataLoader(
                DATASET,
                batch_size=None,
                sampler=BatchSampler(RandomSampler(DATASET, generator=_seeded()), 4, False),
            ),
            "its sampler's sampler's generator",
        ),
    ],
)
def test_a_generator_of_the_loaders_own_is_found_where_it_sits(
    loader: DataLoader, where: str | None
) -> None:
    """A BatchSampler given as sampler= (batch_size=None, to index a TensorDataset a batch
    at a time) hid its sampler's generator: a resume went on silently with another order."""
    assert own_generator(loader) == where
