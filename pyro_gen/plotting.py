"""PNG figures for run directories: sample grids, 2D scatter/density plots, training curves.

matplotlib is an optional dependency (``pip install pyro-gen[plot]``); it is imported only
when a figure is drawn, with the Agg backend so no display is needed.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from pyro_gen.infer.files import atomic_write_bytes

# Density plots evaluate the model on a GRID x GRID mesh (an ODE solve each, for a CNF).
GRID = 100


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError("plots need matplotlib: pip install 'pyro-gen[plot]'") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def image_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 1) -> torch.Tensor:
    """Tiles images ``(N, H, W)`` or ``(N, C, H, W)`` with values in [0, 1] into one
    ``(rows*H', cols*W')`` or ``(rows*H', cols*W', 3)`` array.

    Example:
        >>> image_grid(torch.ones(6, 2, 2), nrow=3).shape
        torch.Size([7, 10])
    """
    images = images.detach().float().cpu().clamp(0, 1)
    if images.dim() == 3:
        images = images.unsqueeze(1)
    n, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    grid = torch.zeros(c, rows * (h + pad) + pad, nrow * (w + pad) + pad)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[:, top : top + h, left : left + w] = images[i]
    return grid[0] if c == 1 else grid[:3].permute(1, 2, 0)


def _write_png(path: str | Path, draw: Callable[[io.BytesIO], None]) -> Path:
    # Rendered in memory and written atomically to exactly ``path``: never through a planted
    # symlink, never a half-written file, and no extension appended behind the caller's back.
    buffer = io.BytesIO()
    draw(buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def save_image_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None) -> Path:
    """Writes a PNG grid of images with values in [0, 1] to exactly ``path``."""
    plt = _pyplot()
    grid = image_grid(images, nrow).numpy()
    return _write_png(
        path, lambda f: plt.imsave(f, grid, cmap="gray", vmin=0.0, vmax=1.0, format="png")
    )


def save_scatter(
    points: torch.Tensor,
    path: str | Path,
    log_prob: Callable[[torch.Tensor], torch.Tensor] | None = None,
    title: str = "",
) -> Path:
    """Writes a PNG of 2D samples, over the model density where ``log_prob`` is given."""
    plt = _pyplot()
    device = points.device  # the model's: its density is evaluated there
    # NumPy arrays for matplotlib: a tensor's __array__ lacks NumPy 2's copy keyword (a warning)
    points = points.detach().float().cpu().numpy()
    fig, ax = plt.subplots(figsize=(5, 5))
    lo, hi = points.min(0) - 0.5, points.max(0) + 0.5
    if log_prob is not None:
        xs = torch.linspace(float(lo[0]), float(hi[0]), GRID)
        ys = torch.linspace(float(lo[1]), float(hi[1]), GRID)
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2).to(device)
        with torch.no_grad():
            density = log_prob(grid).exp().reshape(GRID, GRID).float().cpu().numpy()
        ax.pcolormesh(xs.numpy(), ys.numpy(), density, shading="auto", cmap="viridis")
    ax.scatter(points[:, 0], points[:, 1], s=2, c="white" if log_prob is not None else "k")
    ax.set_title(title)
    ax.set_aspect("equal")
    try:
        return _write_png(
            path, lambda f: fig.savefig(f, dpi=100, bbox_inches="tight", format="png")
        )
    finally:
        plt.close(fig)


def save_curves(
    history: Sequence[dict[str, Any]],
    path: str | Path,
    bound: str = "ELBO",
    train_bound: str | None = None,
    is_loss: bool = False,
) -> Path:
    """Writes a PNG of the per-epoch training objective and, where recorded, the held-out
    one, labelled ``bound``; the training curve is labelled ``train_bound`` (default
    ``bound``) where the objective trained differs from the held-out one, e.g. an IWAE bound
    trained while ``test_elbo`` is the ELBO.

    The curves are ``-train_loss`` and ``test_elbo`` (an ELBO, or the negated loss ``bound``
    names), or with ``is_loss`` ``train_loss`` and ``test_loss`` as they are (an adversarial
    loss, which no bound negates)."""
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    sign, test_key = (1.0, "test_loss") if is_loss else (-1.0, "test_elbo")
    epochs = [r["epoch"] for r in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(
        epochs,
        [sign * r["train_loss"] for r in history],
        "o-",
        label=f"train {train_bound or bound} / example",
    )
    tested = [r for r in history if test_key in r]
    if tested:
        ax.plot(
            [r["epoch"] for r in tested],
            [r[test_key] for r in tested],
            "s-",
            label=f"test {bound} / example",
        )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole
    nats = bound in ("ELBO", "exact log-likelihood")
    ax.set_ylabel("loss per example" if is_loss else "nats per example" if nats else "per example")
    ax.set_xlabel("epoch")
    ax.legend()
    try:
        return _write_png(
            path, lambda f: fig.savefig(f, dpi=100, bbox_inches="tight", format="png")
        )
    finally:
        plt.close(fig)
