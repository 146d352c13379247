"""The size arguments of the ready-made flows, checked where the flow is built.

Without these checks ``num_layers=0`` or ``-1`` (``depth``, CNF's ``num_blocks`` alike) built a
flow with no layers at all, a fixed standard normal that SVI "trained" without a word; a
fractional count failed with "'float' object cannot be interpreted as an integer", naming no
argument; and a ``num_levels`` too deep for the image failed in a squeeze or mask of a shape
the user never passed ("Squeeze by 2 needs H and W divisible by it, got (4, 1, 1)").
"""

from __future__ import annotations

from pyro_gen.nn.arguments import check_count

__all__ = ["check_count", "check_levels", "level_fits"]


def level_fits(chw: tuple[int, int, int], levels: int, squeeze_last: bool) -> bool:
    """Whether an image ``(C, H, W)`` takes ``levels`` multi-scale levels: every level but the
    last squeezes (halving H and W; with ``squeeze_last``, Glow's layout, the last one too),
    and after a squeeze the last level of RealNVP's layout runs checkerboard couplings on at
    least 2x2 pixels (one level without a squeeze is left to the mask's own check).

    Example:
        >>> level_fits((1, 28, 28), 3, squeeze_last=False), level_fits((1, 28, 28), 3, True)
        (True, False)
    """
    _, h, w = chw
    n = levels if squeeze_last else levels - 1
    if n == 0:
        return True
    small = 1 if squeeze_last else 2
    return h % 2**n == 0 and w % 2**n == 0 and min(h, w) // 2**n >= small


def check_levels(
    flow: str, chw: tuple[int, int, int], num_levels: int | None, squeeze_last: bool
) -> int:
    """``num_levels`` checked against the image (``None``: the most it takes, up to 3): a
    whole number >= 1 that :func:`level_fits`, or an error naming the most the image takes.

    Example:
        >>> check_levels("Glow", (1, 8, 8), None, squeeze_last=True)
        3
        >>> check_levels("Glow", (1, 4, 4), 5, squeeze_last=True)
        Traceback (most recent call last):
        ...
        ValueError: Glow: num_levels=5 does not fit images of shape (1, 4, 4): ... at most 2 ...
    """
    most = 0
    while level_fits(chw, most + 1, squeeze_last):
        most += 1
    if num_levels is None:
        if most:
            return min(most, 3)
        said = f"{flow} squeezes at every level, so H and W must be even"
        raise ValueError(f"{said}; got images of shape {tuple(chw)}")
    levels = check_count("num_levels", num_levels)
    if levels <= most:
        return levels
    each = "every level" if squeeze_last else "every level but the last"
    fits = f"they take at most {most}" if most else "none fits: H and W must be even"
    raise ValueError(
        f"{flow}: num_levels={levels} does not fit images of shape {tuple(chw)}: {each} "
        f"halves H and W, so {fits} (num_levels=None picks the most, up to 3)"
    )
