"""CycleGAN between MNIST and MNIST with thickened strokes, trained on unpaired halves.

The true mapping is known, :math:`T(x) = \\text{maxpool}_{3\\times3}(x)` (grey-level dilation),
but never given in pairs: ``X`` is the first half of the training images, ``Y`` the
dilated second half. After ``--cpu-seconds`` of this thread's CPU time (one torch thread)
the translator :math:`G: X \\to Y` is scored on the test images: class preservation (a
classifier trained on dilated training images reads the digit of :math:`G(x)`; target >=
90%), the L1 distance per pixel to the true mapping :math:`T(x)` (next to the identity's,
what translating nothing scores), and the cycle error :math:`|F(G(x)) - x|` per pixel.

    .venv/bin/python benchmarks/gan_cyclegan.py --cpu-seconds 300
"""

from __future__ import annotations

import argparse
import functools
import json
import time

import pyro
import torch
from torch.nn import functional as F

from pyro_gen.data import load
from pyro_gen.gan import CycleGAN, CycleGANLoss
from pyro_gen.gan.adversarial import fused_adam
from pyro_gen.infer import fit
from pyro_gen.metrics import label_agreement, train_classifier
from pyro_gen.nn import ConvTranslator, DCGANDiscriminator

SHAPE = (1, 28, 28)


def dilate(x: torch.Tensor) -> torch.Tensor:
    """The true mapping: grey-level dilation by a 3x3 square (thicker strokes)."""
    return F.max_pool2d(x, 3, stride=1, padding=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu-seconds", type=float, default=300.0)
    parser.add_argument("--report-at", type=float, nargs="*", default=[],
                        help="earlier CPU times at which to score too")  # fmt: skip
    parser.add_argument("--cycle-weight", type=float, default=10.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--num-test", type=int, default=2000)
    parser.add_argument("--classifier-epochs", type=int, default=1)
    parser.add_argument("--chunk", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    xs, ys = load("mnist", "train")
    xt, yt = load("mnist", "test")
    x = xs.float()[:, None] / 255
    half = x.shape[0] // 2
    # unpaired: X is one half, Y the other half dilated; no image appears in both
    data = {"x": x[:half], "y": dilate(x[half : 2 * half])}
    test = xt.float()[: args.num_test, None] / 255
    start = time.thread_time()
    clf = train_classifier(dilate(x), ys, epochs=args.classifier_epochs, seed=args.seed)
    out = {"args": vars(args), "torch": torch.__version__, "pyro": pyro.__version__,
           "classifier_cpu_s": round(time.thread_time() - start, 1)}  # fmt: skip
    # what the measure reads on the true mapping's output, and on untranslated digits
    out["classifier_accuracy_on_dilated_test"] = label_agreement(clf, dilate(test), yt[: len(test)])
    out["class_preservation_identity"] = label_agreement(clf, test, yt[: len(test)])
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    g, f = (ConvTranslator(1, args.width, args.blocks) for _ in range(2))
    cyc = CycleGAN(g, f, SHAPE, SHAPE)
    d_optim = functools.partial(fused_adam, lr=2e-4, betas=(0.5, 0.999))
    loss = CycleGANLoss(DCGANDiscriminator(SHAPE), DCGANDiscriminator(SHAPE),
                        cycle_weight=args.cycle_weight, optim=d_optim)  # fmt: skip
    optim = pyro.optim.Adam({"lr": 2e-4, "betas": (0.5, 0.999)})
    print(json.dumps(out), flush=True)
    used, steps = 0.0, 0
    for mark in sorted({*args.report_at, args.cpu_seconds}):
        start = time.thread_time()  # scoring is left out of the training time
        while used + time.thread_time() - start < mark:
            fit(cyc, data, steps=args.chunk, batch_size=args.batch_size, loss=loss, optim=optim,
                progress=False)  # fmt: skip
            steps += args.chunk
        used += time.thread_time() - start
        record = {"steps": steps, "cpu_s": round(used, 1)}
        with torch.no_grad():
            translated, truth = cyc.translate(test), dilate(test)
            share, se = label_agreement(clf, translated, yt[: len(test)])
            record.update(
                class_preservation=share,
                class_preservation_se=se,
                l1_to_true_mapping=float((translated - truth).abs().mean()),
                l1_identity_to_true_mapping=float((test - truth).abs().mean()),
                cycle_error=float((cyc.translate_back(translated) - test).abs().mean()),
            )
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
