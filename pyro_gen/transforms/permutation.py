"""Fixed permutations of features (vectors) or channels (images), stored as buffers."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pyro_gen.transforms._base import FlowTransformModule, as_event_shape
from pyro_gen.transforms.pyro_arguments import pyro_arguments


class Permute(FlowTransformModule):
    r"""Permutes the first event dim: features of a vector, channels of an image.

    :math:`y = x_{\pi}`, :math:`\log|\det J| = 0`. Unlike
    :class:`pyro.distributions.transforms.Permute`, the permutation is a registered
    buffer, so ``.to(device)`` and ``state_dict`` carry it.

    Args:
        permutation: a permutation of ``range(event_shape[0])``.
        event_shape: ``D`` / ``(D,)`` or ``(C, H, W)``; defaults to ``(len(permutation),)``.
        cache_size: 1 (default, as Pyro's ``Permute``) or 0.
        dim: Pyro's spelling of which dim is permuted, accepted where it names the first
            event dim: ``-1`` for a vector, ``-3`` with ``event_shape=(C, H, W)``.

    Example:
        >>> t = Permute(torch.tensor([2, 0, 1]))
        >>> t(torch.tensor([10.0, 11.0, 12.0])).tolist()
        [12.0, 10.0, 11.0]
    """

    def __init__(
        self,
        permutation: torch.Tensor,
        event_shape: int | tuple[int, ...] | None = None,
        *,
        cache_size: int = 1,
        dim: int | None = None,
    ) -> None:
        indices = torch.as_tensor(permutation)
        if indices.is_floating_point() and not torch.equal(indices, indices.trunc()):
            # converted to long, [0.5, 1.7, 2.2] passed for the permutation [0, 1, 2]
            raise ValueError(f"a permutation holds whole-number indices, got {permutation!r}")
        permutation = indices.to(torch.long)
        n = permutation.numel()
        super().__init__((n,) if event_shape is None else event_shape, cache_size=cache_size)
        if dim is not None and dim != -len(self.event_shape):
            # Pyro's Permute(perm, dim=d) permutes dim d of an event of -d dims; here the
            # event shape says which dims form the event, and the first of them is permuted.
            raise ValueError(
                f"Permute(dim={dim}) with event_shape {self.event_shape}: pyro_gen permutes the "
                f"first event dim, which is dim {-len(self.event_shape)} here; pass the event "
                f"shape whose first dim is the one to permute (e.g. event_shape=(C, H, W) for "
                f"Pyro's dim=-3 on images) and dim={-len(self.event_shape)} or no dim"
            )
        if self.event_shape[0] != n or not torch.equal(
            permutation.cpu().sort().values, torch.arange(n)
        ):
            raise ValueError(f"not a permutation of range({self.event_shape[0]}): {permutation}")
        self.register_buffer("permutation", permutation)
        self.register_buffer("inv_permutation", torch.argsort(permutation))

    def _ladj(self, v: torch.Tensor) -> torch.Tensor:
        return v.new_zeros(v.shape[: v.dim() - len(self.event_shape)])

    def _forward(self, x):
        dim = x.dim() - len(self.event_shape)
        return x.index_select(dim, self.permutation), self._ladj(x)

    def _backward(self, y):
        dim = y.dim() - len(self.event_shape)
        return y.index_select(dim, self.inv_permutation), self._ladj(y)


def reverse_permutation(n: int) -> torch.Tensor:
    """``[n-1, ..., 0]`` (MAF/RealNVP between layers).

    Example:
        >>> reverse_permutation(3).tolist()
        [2, 1, 0]
    """
    return torch.arange(n - 1, -1, -1)


def random_permutation(n: int, seed: int | None = None) -> torch.Tensor:
    """A uniformly random permutation, reproducible with ``seed``.

    Example:
        >>> torch.equal(random_permutation(5, seed=1), random_permutation(5, seed=1))
        True
    """
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=gen)


@pyro_arguments
def permute(
    event_shape: int | tuple[int, ...],
    kind: str | torch.Tensor | Sequence[int] = "reverse",
    seed: int | None = None,
    *,
    cache_size: int = 1,
) -> Permute:
    """Builds a :class:`Permute`: ``kind="reverse"`` or ``"random"`` over the first event dim,
    or a given permutation, a tensor or list of indices (Pyro's
    ``permute(input_dim, permutation)``).

    Example:
        >>> permute((3, 2, 2)).permutation.tolist()
        [2, 1, 0]
        >>> permute(3, [1, 2, 0])(torch.tensor([10.0, 11.0, 12.0])).tolist()
        [11.0, 12.0, 10.0]
    """
    shape = as_event_shape(event_shape)
    if not isinstance(kind, str):
        # indices as a tensor, list or numpy array, as Permute itself takes them (a list
        # was refused here with "kind must be 'reverse' or 'random'")
        return Permute(kind, shape, cache_size=cache_size)
    if kind == "reverse":
        perm = reverse_permutation(shape[0])
    elif kind == "random":
        perm = random_permutation(shape[0], seed)
    else:
        raise ValueError(
            f"kind must be 'reverse', 'random' or a permutation of range({shape[0]}) "
            f"(a tensor or list of indices), got {kind!r}"
        )
    return Permute(perm, shape, cache_size=cache_size)
