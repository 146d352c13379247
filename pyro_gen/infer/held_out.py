"""``fit``'s held-out data: read once before training to check it, scored after epochs.

Bad held-out data (no batches, batches the model cannot be scored on) should fail before
an epoch of training, not after it, so ``fit`` reads the first batch up front. A user's
batch function may be expensive or stateful (a generator factory, a counter) and a one-shot
iterator loses what is read from it, so that read is the first evaluation's own: the pass it
starts is kept and scored by the first evaluation, and the function is called once per
evaluation, as the training data's is once per epoch. A tensor, a tuple or dict of tensors,
a list or a ``DataLoader`` is re-read at every evaluation, as before.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from pyro_gen.data.batching import Call, IterableBatches, batch_calls


class HeldOutData:
    """``eval_data`` as ``fit`` reads it: :attr:`first` batch now, then one pass per
    evaluation from :meth:`for_evaluation`.

    Args:
        data: the held-out data, in any form :func:`~pyro_gen.data.batching.batch_calls`
            takes.
        batch_size: examples per batch for tensor data (only the first batch is read here).
        device: where the first batch is moved for checking.

    Raises:
        ValueError, TypeError: the data hold no batch or are of a form ``fit`` does not
            take, naming ``eval_data``.

    Example:
        >>> calls = []
        >>> def batches():
        ...     calls.append(1)
        ...     return iter([torch.zeros(2), torch.ones(3)])
        >>> held_out = HeldOutData(batches, 256, None)
        >>> held_out.first.size, len(calls)
        (2, 1)
        >>> [b.shape[0] for b in held_out.for_evaluation()], len(calls)  # the same pass
        ([2, 3], 1)
        >>> [b.shape[0] for b in held_out.for_evaluation()()], len(calls)  # the next one
        ([2, 3], 2)
    """

    def __init__(self, data: Any, batch_size: int, device: torch.device | None) -> None:
        self.data = data
        try:
            calls = batch_calls(data, batch_size, shuffle=False, device=device)
            self.first: Call = calls.peek()
        except (ValueError, TypeError) as error:
            raise type(error)(f"eval_data (the held-out data): {error}") from error
        # the pass the peek started, when another would cost a call or is not there
        self._kept: IterableBatches | None = None
        if isinstance(calls, IterableBatches) and calls.makes_a_pass_per_read:
            self._kept = calls
        self._one_shot = isinstance(data, Iterator)
        #: the examples a batch's loss stands for where the data plate subsamples (its full
        #: size N: Pyro scales a batch of B by N / B); None: a batch stands for itself
        self.represented: int | None = None

    def for_evaluation(self) -> Any:
        """The data to pass to the next evaluation: the kept pass (an iterator of the
        user's batches) the first time, the user's data afterwards.

        Raises:
            ValueError: a one-shot iterator asked for a second evaluation.
        """
        if self._kept is not None:
            kept, self._kept = self._kept, None
            return kept.take_peeked()
        if self._one_shot:
            raise ValueError(
                "eval_data is an iterator, used up by the first evaluation: pass a tensor, a "
                "list of batches or a function returning a fresh iterator to evaluate more "
                "than once (or eval_every= at least epochs=, to evaluate once at the end)"
            )
        return self.data


def evaluates_after(epoch: int, eval_every: int, last: bool) -> bool:
    """Whether ``fit`` scores the held-out data once ``epoch`` epochs are complete: after
    every ``eval_every``-th epoch and after the ``last``.

    Example:
        >>> evaluates_after(4, 2, False), evaluates_after(3, 2, False), evaluates_after(3, 2, True)
        (True, False, True)
    """
    return epoch % eval_every == 0 or last


def evaluations(first_epoch: int, epochs: int, eval_every: int) -> int:
    """How many evaluations ``fit`` makes training from ``first_epoch`` (completed epochs)
    to ``epochs``: after every ``eval_every``-th epoch and after the last.

    Example:
        >>> evaluations(0, 5, 2), evaluations(0, 4, 2), evaluations(3, 4, 1), evaluations(4, 4, 1)
        (3, 2, 1, 0)
    """
    after = range(first_epoch + 1, epochs + 1)
    return sum(1 for e in after if evaluates_after(e, eval_every, last=e == epochs))
