"""GANs on MNIST at a fixed CPU budget: classifier Frechet distance, class coverage and, for
the conditional GAN, label agreement.

Each model (non-saturating GAN, WGAN-GP, conditional non-saturating GAN) trains through
``pyro_gen.infer.fit`` with the DCGAN networks of ``pyro_gen.nn`` for ``--cpu-seconds`` of
this thread's CPU time (one torch thread); samples of the generator's weight average and
of its own weights are both scored.
A :class:`~pyro_gen.metrics.SmallClassifier` trained on the training set then scores
``--num-samples`` samples against as many test images; the Frechet distance between two
disjoint random sets of test images of that size is the floor a perfect model would reach.
``--report-at`` scores earlier points of the same run; ``--conditioning`` and
``--generator-conditioning`` choose how the cGAN's networks take the label.

    .venv/bin/python benchmarks/gan_mnist.py --cpu-seconds 300 --num-samples 5000
"""

from __future__ import annotations

import argparse
import functools
import json
import time
import warnings
from collections.abc import Callable

import pyro
import torch

from pyro_gen.data import load
from pyro_gen.gan import Generator, NonSaturatingGAN, WassersteinGP
from pyro_gen.gan.adversarial import fused_adam
from pyro_gen.infer import fit
from pyro_gen.metrics import label_agreement, sample_quality, train_classifier
from pyro_gen.nn import DCGANDiscriminator, DCGANGenerator

MODELS = ["cgan", "gan", "wgan-gp"]


def build(
    name: str, args, conditioning: tuple[str, str] = ("projection", "concat")
) -> tuple[Generator, torch.nn.Module, pyro.optim.PyroOptim]:
    """Generator, loss and the generator's optimizer: DCGAN settings (Adam 2e-4, beta1 0.5)
    for the GANs, the paper's (Adam 1e-4, betas (0, 0.9), 5 critic steps) for WGAN-GP;
    ``conditioning`` is how the conditional GAN's discriminator and generator take the
    label."""
    classes = 10 if name == "cgan" else 0
    net = DCGANGenerator(
        args.latent_dim, width=args.width, context_dim=classes, conditioning=conditioning[1]
    )
    gen = Generator(net, num_classes=classes or None, average=args.average)
    d = DCGANDiscriminator(width=args.width, context_dim=classes, conditioning=conditioning[0])
    if name == "wgan-gp":
        adam = {"lr": 1e-4, "betas": (0.0, 0.9)}
        return (
            gen,
            WassersteinGP(d, optim=functools.partial(fused_adam, **adam)),
            pyro.optim.Adam(adam),
        )
    adam = {"lr": 2e-4, "betas": (0.5, 0.999)}
    return (
        gen,
        NonSaturatingGAN(d, optim=functools.partial(fused_adam, **adam)),
        pyro.optim.Adam(adam),
    )


def train(
    name: str,
    x: torch.Tensor,
    y: torch.Tensor,
    args,
    conditioning: tuple[str, str],
    score: Callable[[Generator], dict],
) -> list[dict]:
    """Trains for ``--cpu-seconds`` of this thread's CPU time and scores the generator at
    each ``--report-at`` time and at the end (scoring is left out of the training time)."""
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    gen, loss, optim = build(name, args, conditioning)
    data = {"x": x, "y": y} if name == "cgan" else x
    used, steps, records = 0.0, 0, []
    for mark in sorted({*args.report_at, args.cpu_seconds}):
        start = time.thread_time()
        while used + time.thread_time() - start < mark:
            fit(gen, data, steps=args.chunk, batch_size=args.batch_size, loss=loss,
                optim=optim, progress=False, step_callbacks=[gen.update_average])  # fmt: skip
            steps += args.chunk
        used += time.thread_time() - start
        records.append({"steps": steps, "epochs": round(steps * args.batch_size / len(x), 2),
                        "cpu_s": round(used, 1), **score(gen)})  # fmt: skip
        print(json.dumps(records[-1]), flush=True)
    return records


@torch.no_grad()
def draw(gen: Generator, n: int, labels: torch.Tensor | None, averaged: bool) -> torch.Tensor:
    """``n`` samples of the averaged or raw weights, 1,000 at a time with the generator in
    training mode: batch norm normalises with each batch's own statistics, as while
    training, since the running statistics belong to the raw weights, not the average. The
    same latent draws for both."""
    gen.train()
    out, g = [], torch.Generator().manual_seed(1)
    for i in range(0, n, 1000):
        y = None if labels is None else labels[i : i + 1000]
        z = torch.randn(min(1000, n - i), gen.latent_dim, generator=g)
        out.append(gen.generate(z, gen.context(y), averaged=averaged))
    return torch.cat(out)[:, None]


def score(
    gen: Generator,
    *,
    clf: torch.nn.Module,
    real: tuple[torch.Tensor, torch.Tensor],
    labels: torch.Tensor | None,
    record: dict,
    save_to: str | None,
) -> dict:
    """Scores samples of the averaged and the raw weights, added to ``record``."""
    record = dict(record)
    for which, averaged in (("average", True), ("raw", False)):
        samples = draw(gen, len(real[0]), labels, averaged)
        record[which] = vars(sample_quality(clf, samples, *real))
        if labels is not None:
            share, se = label_agreement(clf, samples, labels)
            record[which].update(label_agreement=share, label_agreement_se=se)
        if save_to:
            torch.save(samples[:100].clone(), f"{save_to}_{which}.pt")
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="*", default=MODELS, choices=MODELS)
    parser.add_argument("--cpu-seconds", type=float, default=300.0)
    parser.add_argument("--report-at", type=float, nargs="*", default=[],
                        help="earlier CPU times at which to score too")  # fmt: skip
    parser.add_argument("--num-samples", type=int, default=5000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--latent-dim", type=int, default=32)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--average", type=float, default=0.999)
    parser.add_argument(
        "--conditioning", nargs="+", default=["projection"], choices=["projection", "concat"],
        help="how the cGAN's discriminator takes the label; one cGAN run for each",
    )  # fmt: skip
    parser.add_argument(
        "--generator-conditioning", nargs="+", default=["concat"], choices=["concat", "batchnorm"],
        help="how the cGAN's generator takes the label; one cGAN run for each",
    )  # fmt: skip
    parser.add_argument("--classifier-epochs", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-samples-to", default=None, help="path prefix for 100 samples")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="Found vars in model but not guide")
    xs, ys = load("mnist", "train")
    xt, yt = load("mnist", "test")
    x, xt = xs.float() / 255, xt.float() / 255
    n = args.num_samples
    t = time.thread_time()
    clf = train_classifier(x[:, None], ys, epochs=args.classifier_epochs, seed=args.seed)
    # two disjoint halves of the test set in a random order: MNIST's first 5,000 test digits
    # come from other writers than the last 5,000, and the two halves in file order differ
    # by more than two random halves do (a floor inflated by that shift)
    order = torch.randperm(len(xt), generator=torch.Generator().manual_seed(args.seed))
    xt, yt = xt[order], yt[order]
    real = xt[:n, None]
    floor = sample_quality(clf, xt[n : 2 * n, None], real, yt[:n])
    out = {"args": vars(args), "torch": torch.__version__, "pyro": pyro.__version__,
           "classifier_cpu_s": round(time.thread_time() - t, 1),
           "classifier_test_accuracy": floor.real_accuracy,
           "real_against_real": vars(floor)}  # fmt: skip
    print(json.dumps(out), flush=True)
    variants = [(d, g) for d in args.conditioning for g in args.generator_conditioning]
    runs = [(m, c) for m in args.models for c in (variants if m == "cgan" else [None])]
    for name, conditioning in runs:
        labels = torch.arange(n) % 10 if name == "cgan" else None
        tag = "_".join([str(args.save_samples_to), name, *(conditioning or ())])
        scorer = functools.partial(score, clf=clf, real=(real, yt[:n]), labels=labels,
                                   record={"model": name, "conditioning": conditioning},
                                   save_to=args.save_samples_to and tag)  # fmt: skip
        train(name, x, ys, args, conditioning or ("projection", "concat"), scorer)


if __name__ == "__main__":
    main()
