"""What VAEs are used for, measured on MNIST at a stated CPU budget (one torch thread).

Three experiments, each a subcommand printing JSON records:

``miwae``: 50% of the pixels of binarized MNIST missing at random (train and test). A VAE
trained with the ELBO on the observed pixels and one trained with the MIWAE bound (the IWAE
bound with the masked likelihood) are compared on the missing test pixels with mean
imputation (each pixel's observed training mean): the plain VAE imputes once, by decoding
its encoder mean; MIWAE imputes by self-normalised importance sampling
(:func:`pyro_gen.vae.impute`). Errors per image, mean and standard error over images.

``m2``: the M2 semi-supervised VAE with 100 labels (10 per class) and the rest of the
training images unlabelled; test classification error of :math:`q(y \\mid x)` on the 10,000
test images (anchor: Kingma et al. 2014, 11.97% for M2 with 100 labels). The defaults are
the earlier runs' (binarized pixels, PyTorch's initialization, the last epoch reported);
Pyro's SS-VAE example is ``--pixels grey --init-scale 1e-3 --validation 10000`` (the test
error at the epoch of best validation error is reported too).

``m1m2``: Kingma et al.'s M1+M2 with 100 labels: M1, a VAE (784-500-500-50 by default, grey
levels as Bernoulli targets) trained on all 60,000 training images for a thread-CPU budget;
its posterior means and scales on the active units (:func:`pyro_gen.vae.latent_features`)
are the features of M2, an SSVAE with a Gaussian likelihood trained for its own budget with
a fresh draw of the features each time an image is seen. The last ``--validation`` training
images are held out: their labels only choose M2's epoch (they are among M1's unlabelled
images). Beside it, the same classifier network trained on the 100 labelled features alone,
its step chosen on the same validation images. Anchors: 3.33% (M1+M2), 11.97% (M2).

``naive``: a VAE trained with the ELBO; per test image, the naive estimate of
:math:`\\log p(x)` (prior draws) and the importance-weighted one (guide draws) at equal
sample counts, repeated, with standard errors.

    python benchmarks/vae_applications.py miwae --train 10000 --epochs 10
    python benchmarks/vae_applications.py m2 --epochs 5
    python benchmarks/vae_applications.py m1m2 --m1-cpu-minutes 10 --m2-cpu-minutes 6
    python benchmarks/vae_applications.py naive --epochs 5
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time

import pyro
import torch
from pyro.infer import TraceEnum_ELBO
from torch.nn import functional as F

from pyro_gen.data import load
from pyro_gen.infer import fit, iwae_log_likelihood
from pyro_gen.vae import (
    SSVAE,
    VAE,
    impute,
    iwae,
    missing_at_random,
    naive_log_likelihood,
)
from pyro_gen.vae.semi_supervised import semi_supervised_batches


def binarized(split: str, limit: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load("mnist", split)
    x, y = x[:limit], y[:limit]
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(x.float() / 255, generator=g), y


def mean_se(values: torch.Tensor) -> tuple[float, float]:
    values = values.double()
    return float(values.mean()), float(values.std() / math.sqrt(values.numel()))


def imputation_errors(filled: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> dict:
    """Per image over its missing pixels: squared error of the imputed probability and the
    error rate of the imputation thresholded at 1/2."""
    missing = (~mask).flatten(1).double()
    count = missing.sum(1)
    sq = (((filled - x) ** 2).flatten(1).double() * missing).sum(1) / count
    wrong = (((filled > 0.5).double() != x.double()).flatten(1) * missing).sum(1) / count
    (mse, mse_se), (err, err_se) = mean_se(sq), mean_se(wrong)
    return {
        "mse": round(mse, 4),
        "mse_se": round(mse_se, 4),
        "error_rate": round(err, 4),
        "error_rate_se": round(err_se, 4),
    }


def miwae(args: argparse.Namespace) -> None:
    x, _ = binarized("train", args.train, 0)
    x_test, _ = binarized("test", args.test, 1)
    g = torch.Generator().manual_seed(2)
    m, m_test = missing_at_random(x.shape, 0.5, g), missing_at_random(x_test.shape, 0.5, g)
    observed_mean = (x * m).sum(0) / m.sum(0).clamp(min=1)
    filled = torch.where(m_test, x_test, observed_mean.expand_as(x_test))
    record = {"experiment": "miwae", "method": "mean imputation"}
    print(json.dumps(record | imputation_errors(filled, x_test, m_test)), flush=True)
    objectives = {"elbo": ("VAE (ELBO)", 1), "miwae": (f"MIWAE (K={args.k})", args.k)}
    for key in args.models:
        name, k = objectives[key]
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        vae = VAE((28, 28), z_dim=args.z_dim, hidden_dim=args.hidden)
        loss = pyro.infer.Trace_ELBO() if k == 1 else iwae(k)
        start, cpu_start = time.perf_counter(), time.process_time()
        fit(vae, {"x": x, "mask": m}, loss=loss, epochs=args.epochs, batch_size=128, progress=False)
        train_s, train_cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
        vae.eval()
        log_p_obs = iwae_log_likelihood(
            vae, {"x": x_test, "mask": m_test}, num_samples=1000, per_example=True
        )
        # both imputations for both models: training bound and imputation rule separately
        with torch.no_grad():
            z = vae.posterior.encode(torch.where(m_test, x_test, 0.0))[0]
            single = torch.where(m_test, x_test, vae.decoder.mean(z))
        start = time.perf_counter()
        weighted = torch.cat(
            [
                impute(vae, xb, mb, num_samples=args.impute_k)
                for xb, mb in zip(x_test.split(100), m_test.split(100))
            ]
        )
        impute_s = time.perf_counter() - start
        for rule, filled in (
            ("decoder at encoder mean", single),
            (f"importance sampling (K={args.impute_k})", weighted),
        ):
            record = {
                "experiment": "miwae",
                "method": f"{name}, {rule}",
                **imputation_errors(filled, x_test, m_test),
                "log_p_obs_iw1000": [round(v, 2) for v in mean_se(log_p_obs)],
                "epochs": args.epochs,
                "train_images": x.shape[0],
                "test_images": x_test.shape[0],
                "train_s": round(train_s, 1),
                "train_cpu_s": round(train_cpu_s, 1),
                "impute_s": round(impute_s, 1),
            }
            print(json.dumps(record), flush=True)


def grey_levels(split: str, limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel intensities in [0, 1], the Bernoulli decoder's targets as Pyro's SS-VAE
    example takes them (a cross-entropy, not a normalized likelihood of grey levels)."""
    x, y = load("mnist", split)
    return x[:limit].float() / 255, y[:limit]


def fit_semi_supervised(model, batches, args: argparse.Namespace, callback) -> None:
    """M2's training through fit: the label summed out of unlabelled batches (labelled ones
    have no site to enumerate, which is expected here), Adam, ``callback`` after each epoch."""
    fit(
        model,
        batches,
        loss=TraceEnum_ELBO(max_plate_nesting=1, strict_enumeration_warning=False),
        epochs=args.epochs,
        optim=pyro.optim.Adam({"lr": args.lr, "betas": (args.beta1, 0.999)}),
        callbacks=[callback],
        progress=False,
    )


def m2(args: argparse.Namespace) -> None:
    if args.pixels == "grey":
        (x, y), (x_test, y_test) = grey_levels("train", None), grey_levels("test", args.test)
    else:
        (x, y), (x_test, y_test) = binarized("train", None, 0), binarized("test", args.test, 1)
    # the last training images are held out to choose the epoch (as Pyro's example does)
    cut = x.shape[0] - args.validation
    x, y, x_valid, y_valid = x[:cut], y[:cut], x[cut:], y[cut:]
    g = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(x.shape[0], generator=g)
    # 10 labelled examples per class, the rest unlabelled
    labelled = torch.cat([order[y[order] == c][: args.labels // 10] for c in range(10)])
    unlabelled = order[~torch.isin(order, labelled)][: args.unlabelled]
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    init_scale = args.init_scale if args.init_scale > 0 else None
    model = SSVAE(
        (28, 28),
        10,
        z_dim=args.z_dim,
        hidden_dims=(args.hidden,),
        alpha=args.alpha,
        init_scale=init_scale,
    )
    if args.baseline_steps:  # the same classifier network trained on the labelled images alone
        alone = copy.deepcopy(model.classifier)
        opt = torch.optim.Adam(alone.parameters(), lr=args.lr)
        for _ in range(args.baseline_steps):
            loss = F.cross_entropy(alone(x[labelled].flatten(1)), y[labelled])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            wrong = (alone(x_test.flatten(1)).argmax(-1) != y_test).double()
        err, se = mean_se(wrong)
        record = {"experiment": "m2 baseline", "method": "classifier on the labelled images alone"}
        print(json.dumps(record | {"test_error": round(err, 4), "test_error_se": round(se, 4)}))
    batches = semi_supervised_batches(
        x[labelled],
        y[labelled],
        x[unlabelled],
        batch_size=args.batch,
        labelled_passes=args.labelled_passes,
        generator=g,
    )
    history: list[dict] = []
    best: dict = {}

    def test_error(record, module):
        wrong = (module.classify(x_test) != y_test).double()
        with torch.no_grad():  # how sure q(y|x) is
            log_q = module.logits(x_test).log_softmax(-1)
        history.append(
            {
                "epoch": record["epoch"],
                "error": round(float(wrong.mean()), 4),
                "entropy_q_y_nats": round(float(-(log_q.exp() * log_q).sum(-1).mean()), 3),
                "elapsed_s": round(time.perf_counter() - start, 1),
                "cpu_s": round(time.thread_time() - cpu_start, 1),
            }
        )
        if args.validation:
            valid = float((module.classify(x_valid) != y_valid).double().mean())
            history[-1]["valid_error"] = round(valid, 4)
            if not best or valid < best["valid_error"]:
                best.update(history[-1], test_error_se=round(mean_se(wrong)[1], 4))
        print(json.dumps(history[-1]), flush=True)
        # the budget is the CPU time of this thread, so other processes do not shrink it
        return (
            args.cpu_minutes is not None and time.thread_time() - cpu_start > 60 * args.cpu_minutes
        )

    start, cpu_start = time.perf_counter(), time.thread_time()
    fit_semi_supervised(model, batches, args, test_error)
    err, se = mean_se((model.classify(x_test) != y_test).double())
    print(
        json.dumps(
            {
                "experiment": "m2",
                "labels": int(labelled.numel()),
                "unlabelled": int(unlabelled.numel()),
                "validation": args.validation,
                "last_test_error": round(err, 4),
                "last_test_error_se": round(se, 4),
                "best_validation_epoch": best.get("epoch"),
                "test_error_at_best_validation": best.get("error"),
                "test_error_at_best_validation_se": best.get("test_error_se"),
                "test_images": x_test.shape[0],
                "epochs_run": len(history),
                "cpu_s": round(time.thread_time() - cpu_start, 1),
                "train_s": round(time.perf_counter() - start, 1),
                "pixels": args.pixels,
                "init_scale": init_scale,
                "alpha": args.alpha,
                "hidden": args.hidden,
                "z_dim": args.z_dim,
                "batch": args.batch,
                "lr": args.lr,
                "beta1": args.beta1,
                "labelled_passes": args.labelled_passes,
                "seed": args.seed,
                "anchor_kingma2014_m2": 0.1197,
            }
        ),
        flush=True,
    )


def naive(args: argparse.Namespace) -> None:
    x, _ = binarized("train", args.train, 0)
    x_test, _ = binarized("test", args.test, 1)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    vae = VAE((28, 28), z_dim=args.z_dim, hidden_dim=args.hidden)
    fit(vae, x, epochs=args.epochs, batch_size=128, progress=False)
    vae.eval()
    for k in args.ks:
        # interleaved repeats: naive, guided, naive, guided, ...
        runs = {"naive (prior draws)": [], "importance-weighted (guide draws)": []}
        for _ in range(args.repeats):
            runs["naive (prior draws)"].append(
                naive_log_likelihood(vae, x_test, num_samples=k, per_example=True)
            )
            runs["importance-weighted (guide draws)"].append(
                iwae_log_likelihood(vae, x_test, num_samples=k, per_example=True)
            )
        for name, values in runs.items():
            values = torch.stack(values)  # (repeats, images)
            mean, se_images = mean_se(values.mean(0))
            print(
                json.dumps(
                    {
                        "experiment": "naive",
                        "estimator": name,
                        "k": k,
                        "log_p_x": round(mean, 2),
                        "se_over_images": round(se_images, 2),
                        # Monte Carlo spread of one estimate of one image, averaged over images
                        "mc_sd_per_image": round(float(values.std(0).mean()), 2),
                        "repeats": args.repeats,
                        "images": x_test.shape[0],
                        "vae_epochs": args.epochs,
                        "train_images": x.shape[0],
                    }
                ),
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="experiment", required=True)
    for name in ("miwae", "m2", "naive"):
        p = sub.add_parser(name)
        p.add_argument("--epochs", type=int, default=5)
        p.add_argument("--train", type=int, default=None, help="training images (default all)")
        p.add_argument("--test", type=int, default=None, help="test images (default all)")
        p.add_argument("--z-dim", type=int, default=50)
        p.add_argument("--hidden", type=int, default=400)
    sub.choices["miwae"].add_argument("--k", type=int, default=20, help="MIWAE training K")
    sub.choices["miwae"].add_argument("--impute-k", type=int, default=1000)
    sub.choices["miwae"].add_argument(
        "--models", nargs="+", choices=("elbo", "miwae"), default=["elbo", "miwae"]
    )
    sub.choices["m2"].add_argument("--labels", type=int, default=100)
    sub.choices["m2"].add_argument("--seed", type=int, default=0)
    sub.choices["m2"].add_argument(
        "--pixels",
        choices=("grey", "binary"),
        default="binary",
        help="grey levels as Bernoulli targets (Pyro's example) or one fixed binarization",
    )
    sub.choices["m2"].add_argument(
        "--init-scale",
        type=float,
        default=0.0,
        help="std of the hidden layers' initial weights (Pyro's example: 0.001; 0: PyTorch's)",
    )
    sub.choices["m2"].add_argument(
        "--validation",
        type=int,
        default=0,
        help="last training images held out to pick the epoch (0: report the last epoch)",
    )
    sub.choices["m2"].add_argument(
        "--cpu-minutes", type=float, default=None, help="stop after this much thread CPU time"
    )
    sub.choices["m2"].add_argument(
        "--unlabelled", type=int, default=None, help="unlabelled images (default: the rest)"
    )
    sub.choices["m2"].add_argument("--alpha", type=float, default=50.0)
    sub.choices["m2"].add_argument("--batch", type=int, default=100)
    sub.choices["m2"].add_argument("--lr", type=float, default=1e-3)
    sub.choices["m2"].add_argument("--beta1", type=float, default=0.9)
    sub.choices["m2"].add_argument(
        "--baseline-steps",
        type=int,
        default=500,
        help="full-batch steps of the classifier trained on the labels alone (0: skip)",
    )
    sub.choices["m2"].add_argument(
        "--labelled-passes",
        type=float,
        default=1.0,
        help="passes over the labelled images per epoch (1: each image once, Kingma's sum)",
    )
    p = sub.add_parser("m1m2")
    p.add_argument("--test", type=int, default=None, help="test images (default all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--labels", type=int, default=100)
    p.add_argument("--validation", type=int, default=1000, help="held-out training labels")
    p.add_argument("--z-dim", type=int, default=50, help="M1's latent size")
    p.add_argument("--m1-hidden", type=int, default=500)
    p.add_argument("--m1-layers", type=int, default=2)
    p.add_argument("--m1-cpu-minutes", type=float, default=10.0)
    p.add_argument("--m1-path", default=None, help="save M1 here, or load it if it exists")
    p.add_argument("--m2-cpu-minutes", type=float, default=6.0)
    p.add_argument("--m2-z-dim", type=int, default=50)
    p.add_argument("--hidden", type=int, default=300, help="M2's hidden width (Kingma: 300)")
    p.add_argument("--epochs", type=int, default=10_000, help="M2 epochs (the budget stops)")
    p.add_argument("--alpha", type=float, default=50.0)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--labelled-batch", type=int, default=None)
    p.add_argument("--labelled-passes", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--beta1", type=float, default=0.9)
    p.add_argument("--init-scale", type=float, default=1e-3)
    p.add_argument("--baseline-steps", type=int, default=1000)
    p.add_argument(
        "--resample",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="a fresh draw of M1's features each time M2 sees an image (Kingma's code)",
    )
    sub.choices["naive"].add_argument("--ks", type=int, nargs="+", default=[10, 100, 1000])
    sub.choices["naive"].add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from vae_m1m2 import m1m2  # here: vae_m1m2 imports this module's helpers

    experiments = {"miwae": miwae, "m2": m2, "m1m2": m1m2, "naive": naive}
    experiments[args.experiment](args)


if __name__ == "__main__":
    main()
