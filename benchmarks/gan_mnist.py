"""GANs on MNIST at a fixed CPU budget: classifier Frechet distance, class coverage and, for
the conditional GAN, label agreement.

Each model (non-saturating GAN, WGAN-GP, conditional non-saturating GAN) trains through
``pyro_gen.infer.fit`` with the DCGAN networks of ``pyro_gen.nn`` for ``--cpu-seconds`` of
this process's CPU time (one torch thread); samples of the generator's weight average and
of its own weights are both scored.
A :class:`~pyro_gen.metrics.SmallClassifier` trained on the training set then scores
``--num-samples`` samples against as many test images; the Frechet distance between two
disjoint sets of test images of that size is the floor a perfect model would reach.

    .venv/bin/python benchmarks/gan_mnist.py --cpu-seconds 300 --num-samples 5000
"""

from __future__ import annotations

import argparse
import functools
import json
import time
import warnings

import pyro
import torch

from pyro_gen.data import load
from pyro_gen.gan import Generator, NonSaturatingGAN, WassersteinGP
from pyro_gen.gan.adversarial import fused_adam
from pyro_gen.infer import fit
from pyro_gen.metrics import label_agreement, sample_quality, train_classifier
from pyro_gen.nn import DCGANDiscriminator, DCGANGenerator

MODELS = ["cgan", "gan", "wgan-gp"]


def build(name: str, args) -> tuple[Generator, torch.nn.Module, pyro.optim.PyroOptim]:
    """Generator, loss and the generator's optimizer: DCGAN settings (Adam 2e-4, beta1 0.5)
    for the GANs, the paper's (Adam 1e-4, betas (0, 0.9), 5 critic steps) for WGAN-GP."""
    classes = 10 if name == "cgan" else 0
    net = DCGANGenerator(args.latent_dim, width=args.width, context_dim=classes)
    gen = Generator(net, num_classes=classes or None, average=args.average)
    d = DCGANDiscriminator(width=args.width, context_dim=classes)
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


def train(name: str, x: torch.Tensor, y: torch.Tensor, args) -> tuple[Generator, dict]:
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    gen, loss, optim = build(name, args)
    data = {"x": x, "y": y} if name == "cgan" else x
    start, steps = time.process_time(), 0
    while time.process_time() - start < args.cpu_seconds:
        fit(gen, data, steps=args.chunk, batch_size=args.batch_size, loss=loss,
            optim=optim, progress=False, step_callbacks=[gen.update_average])  # fmt: skip
        steps += args.chunk
    used = time.process_time() - start
    return gen, {"steps": steps, "epochs": round(steps * args.batch_size / len(x), 2),
                 "cpu_s": round(used, 1)}  # fmt: skip


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    parser.add_argument("--cpu-seconds", type=float, default=300.0)
    parser.add_argument("--num-samples", type=int, default=5000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--latent-dim", type=int, default=32)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--average", type=float, default=0.999)
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
    t = time.process_time()
    clf = train_classifier(x[:, None], ys, epochs=args.classifier_epochs, seed=args.seed)
    real = xt[:n, None]
    floor = sample_quality(clf, xt[n : 2 * n, None], real, yt[:n])
    out = {"args": vars(args), "torch": torch.__version__, "pyro": pyro.__version__,
           "classifier_cpu_s": round(time.process_time() - t, 1),
           "classifier_test_accuracy": floor.real_accuracy,
           "real_against_real": vars(floor)}  # fmt: skip
    print(json.dumps(out), flush=True)
    for name in args.models:
        gen, record = train(name, x, ys, args)
        labels = torch.arange(n) % 10 if name == "cgan" else None
        record["model"] = name
        for which, averaged in (("average", True), ("raw", False)):
            samples = draw(gen, n, labels, averaged)
            q = sample_quality(clf, samples, real, yt[:n])
            record[which] = vars(q)
            if labels is not None:
                share, se = label_agreement(clf, samples, labels)
                record[which].update(label_agreement=share, label_agreement_se=se)
            if args.save_samples_to:
                torch.save(samples[:100].clone(), f"{args.save_samples_to}_{name}_{which}.pt")
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
