"""A small Attend-Infer-Repeat model, written as Pyro's ``examples/air`` writes it: a variable
number of objects per image, each step a Bernoulli "is there another object" site
``z_pres_t`` that gates the step's pose ``z_where_t`` and appearance ``z_what_t`` through
``poutine.mask``, inside ``pyro.markov``. The guide is recurrent and attends to the image
through a spatial transformer; ``z_pres_t`` is not reparameterizable, so it is trained with
``TraceGraph_ELBO``'s score-function gradient and a neural baseline
(``infer={"baseline": {"nn_baseline": ..., "nn_baseline_input": ...}}``).

.. math::

    z^{pres}_t \\sim \\operatorname{Bernoulli}(\\rho\\, z^{pres}_{t-1}),\\quad
    z^{where}_t, z^{what}_t \\sim \\mathcal{N}(\\cdot) \\text{ where } z^{pres}_t = 1,\\quad
    x \\sim \\mathcal{N}\\Big(\\sum_t z^{pres}_t\\,
        \\operatorname{ST}(z^{where}_t, f(z^{what}_t)),\\ \\sigma^2 I\\Big).

Images are 8x8 with 0, 1 or 2 bright 3x3 squares; two steps at most.

References:
    Eslami et al., "Attend, Infer, Repeat: Fast Scene Understanding with Generative
    Models", arXiv:1603.08575.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn
from torch.nn import functional as F

IMAGE, WINDOW, STEPS, Z_WHAT, HIDDEN = 8, 3, 2, 2, 32
#: Prior of a window's pose (scale, x, y): a window covers about 3 of the 8 pixels.
WHERE_LOC, WHERE_SCALE = (2.5, 0.0, 0.0), (0.3, 1.0, 1.0)


def scenes(num: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(num, 8, 8)`` images with 0, 1 or 2 squares of ones (summed where they overlap),
    and the number of squares in each."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, STEPS + 1, (num,), generator=g)
    images = torch.zeros(num, IMAGE, IMAGE)
    for i in range(num):
        for _ in range(int(counts[i])):
            r, c = torch.randint(0, IMAGE - WINDOW + 1, (2,), generator=g).tolist()
            images[i, r : r + WINDOW, c : c + WINDOW] += 1.0
    return images, counts


def _cat(*tensors: torch.Tensor) -> torch.Tensor:
    # Sampled values gain leading dims (evaluation's particles) that the data lack.
    lead = torch.broadcast_shapes(*(t.shape[:-1] for t in tensors))
    return torch.cat([t.expand(*lead, t.shape[-1]) for t in tensors], -1)


def _pose(z_where: torch.Tensor) -> torch.Tensor:
    """(scale, x, y) -> the 2x3 affine map [[s, 0, x], [0, s, y]]."""
    s, x, y = z_where.unbind(-1)
    zero = torch.zeros_like(s)
    return torch.stack([s, zero, x, zero, s, y], -1).reshape(-1, 2, 3)


def _inverse(z_where: torch.Tensor) -> torch.Tensor:
    s, xy = z_where[..., :1], z_where[..., 1:]
    return torch.cat([1.0 / s, -xy / s], -1)


def window_to_image(z_where: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
    """Places each ``WINDOW**2`` window in an ``IMAGE x IMAGE`` canvas."""

    def place(where, w):
        grid = F.affine_grid(_pose(where), [w.shape[0], 1, IMAGE, IMAGE], align_corners=False)
        w = w.reshape(-1, 1, WINDOW, WINDOW)
        return F.grid_sample(w, grid, align_corners=False).reshape(-1, IMAGE, IMAGE)

    shape = torch.broadcast_shapes(z_where.shape[:-1], windows.shape[:-1])
    out = place(
        z_where.expand(*shape, 3).reshape(-1, 3), windows.expand(*shape, -1).reshape(-1, WINDOW**2)
    )
    return out.reshape(*shape, IMAGE, IMAGE)


def image_to_window(z_where: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Reads the ``WINDOW**2`` pixels that ``z_where`` attends to in each image."""
    shape = torch.broadcast_shapes(z_where.shape[:-1], images.shape[:-2])
    where = _inverse(z_where.expand(*shape, 3).reshape(-1, 3))
    imgs = images.expand(*shape, IMAGE, IMAGE).reshape(-1, 1, IMAGE, IMAGE)
    grid = F.affine_grid(_pose(where), [imgs.shape[0], 1, WINDOW, WINDOW], align_corners=False)
    out = F.grid_sample(imgs, grid, align_corners=False)
    return out.reshape(*shape, WINDOW**2)


class AIR(nn.Module):
    """Model and guide; ``p_present`` is the prior's chance of one more object."""

    def __init__(self, p_present: float = 0.5, sigma: float = 0.3) -> None:
        super().__init__()
        self.p_present, self.sigma = p_present, sigma
        self.decoder = nn.Sequential(
            nn.Linear(Z_WHAT, 16), nn.Softplus(), nn.Linear(16, WINDOW**2), nn.Sigmoid()
        )
        inputs = IMAGE**2 + 3 + Z_WHAT + 1
        # An Elman cell of Linear layers, so that leading particle dims pass through.
        self.rnn = nn.Linear(inputs + HIDDEN, HIDDEN)
        self.predict = nn.Linear(HIDDEN, 1 + 3 + 3)
        self.encoder = nn.Sequential(
            nn.Linear(WINDOW**2, 16), nn.Softplus(), nn.Linear(16, 2 * Z_WHAT)
        )
        # The baseline predicts each image's downstream cost of the step's z_pres draw.
        self.baseline = nn.Sequential(
            nn.Linear(IMAGE**2 + 1, 16), nn.ReLU(), nn.Linear(16, 1), nn.Flatten(-2)
        )
        self.register_buffer("where_loc", torch.tensor(WHERE_LOC))
        self.register_buffer("where_scale", torch.tensor(WHERE_SCALE))

    def model(self, x: torch.Tensor) -> None:
        pyro.module("decoder", self.decoder)
        n = x.shape[0]
        with pyro.plate("images", n):
            canvas = x.new_zeros(n, IMAGE, IMAGE)
            present = x.new_ones(n, 1)
            for t in pyro.markov(range(STEPS)):
                present = pyro.sample(
                    f"z_pres_{t}", dist.Bernoulli(self.p_present * present).to_event(1)
                )
                # Once an image says "no more objects" its later poses and codes are not
                # scored (masked), as AIR's example does with .mask(z_pres).
                with poutine.mask(mask=present[..., 0].bool()):
                    z_where = pyro.sample(
                        f"z_where_{t}",
                        dist.Normal(self.where_loc, self.where_scale).expand([n, 3]).to_event(1),
                    )
                    z_what = pyro.sample(
                        f"z_what_{t}", dist.Normal(x.new_zeros(n, Z_WHAT), 1.0).to_event(1)
                    )
                drawn = window_to_image(z_where, self.decoder(z_what))
                canvas = canvas + drawn * present[..., None]
            flat = canvas.reshape(*canvas.shape[:-2], IMAGE**2)
            pyro.sample(
                "obs", dist.Normal(flat, self.sigma).to_event(1), obs=x.reshape(n, IMAGE**2)
            )

    def guide(self, x: torch.Tensor) -> None:
        pyro.module("guide_nets", nn.ModuleList([self.rnn, self.predict, self.encoder]))
        # The baseline's parameters are trained by TraceGraph_ELBO's baseline loss; Pyro's
        # optimizer only sees them through the param store.
        pyro.module("baseline", self.baseline)
        n = x.shape[0]
        flat = x.reshape(n, IMAGE**2)
        with pyro.plate("images", n):
            h = x.new_zeros(n, HIDDEN)
            z_where, z_what = x.new_zeros(n, 3), x.new_zeros(n, Z_WHAT)
            present = x.new_ones(n, 1)
            for t in pyro.markov(range(STEPS)):
                inputs = _cat(flat, z_where, z_what, present, h)
                h = torch.tanh(self.rnn(inputs))
                out = self.predict(h)
                p = torch.sigmoid(out[..., 0:1]) * present
                baseline = {
                    "nn_baseline": self.baseline,
                    "nn_baseline_input": _cat(flat, present),
                }
                present = pyro.sample(
                    f"z_pres_{t}", dist.Bernoulli(p).to_event(1), infer={"baseline": baseline}
                )
                with poutine.mask(mask=present[..., 0].bool()):
                    loc = self.where_loc + out[..., 1:4]
                    scale = self.where_scale * F.softplus(out[..., 4:7] + 0.5)
                    z_where = pyro.sample(f"z_where_{t}", dist.Normal(loc, scale).to_event(1))
                    what_loc, what_log_scale = self.encoder(image_to_window(z_where, x)).chunk(
                        2, -1
                    )
                    z_what = pyro.sample(
                        f"z_what_{t}", dist.Normal(what_loc, what_log_scale.exp()).to_event(1)
                    )

    @torch.no_grad()
    def count_accuracy(self, x: torch.Tensor, counts: torch.Tensor, draws: int = 20) -> float:
        """How often the guide's number of objects (z_pres summed over steps) is right."""
        right = 0.0
        for _ in range(draws):
            trace = poutine.trace(self.guide).get_trace(x)
            found = sum(trace.nodes[f"z_pres_{t}"]["value"][..., 0] for t in range(STEPS))
            right += (found == counts).float().mean().item()
        return right / draws
