"""Kingma et al.'s M1+M2 with 100 labels on MNIST, at a stated CPU budget (one torch thread):
the ``m1m2`` experiment of ``benchmarks/vae_applications.py``, which runs it (its docstring
describes it, and its command line holds the options):

    python benchmarks/vae_applications.py m1m2 --m1-cpu-minutes 10 --m2-cpu-minutes 6
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time

import pyro
import torch
from torch.nn import functional as F
from vae_applications import fit_semi_supervised, grey_levels, mean_se

from pyro_gen.infer import fit
from pyro_gen.vae import (
    SSVAE,
    VAE,
    MLPDecoder,
    MLPEncoder,
    NormalPosterior,
    latent_features,
)
from pyro_gen.vae.semi_supervised import semi_supervised_batches


def m1_vae(hidden: int, layers: int, z_dim: int) -> VAE:
    """M1: an MLP VAE with ``layers`` softplus layers of ``hidden`` units each way."""
    dims = (hidden,) * layers
    return VAE(
        (28, 28),
        z_dim=z_dim,
        decoder=MLPDecoder(z_dim, (28, 28), dims),
        posterior=NormalPosterior(MLPEncoder((28, 28), z_dim, dims)),
        name="m1",
    )


def train_m1(args: argparse.Namespace, x: torch.Tensor) -> tuple[VAE, dict]:
    """M1 on all the training images for a thread-CPU budget, or loaded from ``--m1-path``
    when that file exists (with the record of the run that trained it)."""
    m1 = m1_vae(args.m1_hidden, args.m1_layers, args.z_dim)
    if args.m1_path and os.path.exists(args.m1_path):
        saved = torch.load(args.m1_path, weights_only=False)
        m1.load_state_dict(saved["state_dict"])
        return m1, saved["record"] | {"loaded_from": args.m1_path}
    pyro.set_rng_seed(args.seed)
    history = []
    cpu_start = time.thread_time()

    def budget(record, module):
        history.append(
            {
                "epoch": record["epoch"],
                "train_elbo": round(-record["train_loss"], 2),
                "cpu_s": round(time.thread_time() - cpu_start, 1),
            }
        )
        print(json.dumps({"m1": history[-1]}), flush=True)
        return time.thread_time() - cpu_start > 60 * args.m1_cpu_minutes

    fit(m1, x, epochs=10_000, batch_size=100, callbacks=[budget], progress=False)
    record = {
        "m1_epochs": len(history),
        "m1_cpu_s": history[-1]["cpu_s"],
        "m1_hidden": [args.m1_hidden] * args.m1_layers,
        "m1_z_dim": args.z_dim,
        "m1_last_train_elbo": history[-1]["train_elbo"],
    }
    if args.m1_path:
        torch.save({"state_dict": m1.state_dict(), "record": record}, args.m1_path)
    return m1, record


def m1m2(args: argparse.Namespace) -> None:
    (x, y), (x_test, y_test) = grey_levels("train", None), grey_levels("test", args.test)
    pyro.clear_param_store()
    m1, m1_record = train_m1(args, x)
    print(json.dumps({"experiment": "m1m2 M1"} | m1_record), flush=True)
    features = latent_features(m1, x)
    keep = features.keep
    f_test = latent_features(m1, x_test, keep=keep).loc
    cut = x.shape[0] - args.validation
    f_valid, y_valid = features.loc[cut:], y[cut:]
    loc, scale, y = features.loc[:cut], features.scale[:cut], y[:cut]
    g = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(cut, generator=g)
    labelled = torch.cat([order[y[order] == c][: args.labels // 10] for c in range(10)])
    unlabelled = order[~torch.isin(order, labelled)]
    d = int(keep.sum())
    pyro.set_rng_seed(args.seed)
    init_scale = args.init_scale if args.init_scale > 0 else None
    m2 = SSVAE(
        (d,),
        10,
        z_dim=args.m2_z_dim,
        hidden_dims=(args.hidden,),
        likelihood="gaussian_learned",
        alpha=args.alpha,
        init_scale=init_scale,
        name="m2",
    )

    def errors(logits_fn) -> tuple[float, float, float]:
        with torch.no_grad():
            valid = float((logits_fn(f_valid).argmax(-1) != y_valid).double().mean())
            err, se = mean_se((logits_fn(f_test).argmax(-1) != y_test).double())
        return valid, err, se

    # the supervised baseline: M2's classifier network on the labelled features alone
    alone = copy.deepcopy(m2.classifier)
    opt = torch.optim.Adam(alone.parameters(), lr=args.lr)
    best_alone: dict = {}
    for step in range(1, args.baseline_steps + 1):
        loss = F.cross_entropy(alone(loc[labelled]), y[labelled])
        opt.zero_grad()
        loss.backward()
        opt.step()
        # every 25 steps and at the last one: a run of fewer steps is still evaluated
        if step % 25 == 0 or step == args.baseline_steps:
            valid, err, se = errors(alone)
            if not best_alone or valid < best_alone["valid_error"]:
                best_alone = {"step": step, "valid_error": valid, "test_error": err, "se": se}
    record = {"experiment": "m1m2 baseline", "method": "M2's classifier on the labelled features"}
    print(json.dumps(record | {k: round(v, 4) for k, v in best_alone.items()}), flush=True)

    batches = semi_supervised_batches(
        loc[labelled],
        y[labelled],
        loc[unlabelled],
        batch_size=args.batch,
        labelled_batch_size=args.labelled_batch,
        labelled_passes=args.labelled_passes,
        generator=g,
        labelled_scale=scale[labelled] if args.resample else None,
        unlabelled_scale=scale[unlabelled] if args.resample else None,
    )
    history: list[dict] = []
    best: dict = {}

    def evaluate(record, module):
        valid, err, se = errors(module.logits)
        with torch.no_grad():
            log_q = module.logits(f_test).log_softmax(-1)
        history.append(
            {
                "epoch": record["epoch"],
                "test_error": round(err, 4),
                "valid_error": round(valid, 4),
                "entropy_q_y_nats": round(float(-(log_q.exp() * log_q).sum(-1).mean()), 3),
                "cpu_s": round(time.thread_time() - cpu_start, 1),
            }
        )
        if not best or valid < best["valid_error"]:
            best.update(history[-1], test_error_se=round(se, 4))
        print(json.dumps(history[-1]), flush=True)
        return time.thread_time() - cpu_start > 60 * args.m2_cpu_minutes

    cpu_start = time.thread_time()
    fit_semi_supervised(m2, batches, args, evaluate)
    print(
        json.dumps(
            {
                "experiment": "m1m2",
                "labels": int(labelled.numel()),
                "unlabelled": int(unlabelled.numel()),
                "validation": args.validation,
                "kept_units": d,
                "best_validation_epoch": best["epoch"],
                "test_error_at_best_validation": best["test_error"],
                "test_error_se": best["test_error_se"],
                "validation_error": best["valid_error"],
                "last_test_error": history[-1]["test_error"],
                # None with --baseline-steps 0 (no baseline trained)
                "baseline_test_error": round(best_alone["test_error"], 4) if best_alone else None,
                "baseline_test_error_se": round(best_alone["se"], 4) if best_alone else None,
                "m2_epochs_run": len(history),
                "m2_cpu_s": history[-1]["cpu_s"],
                **m1_record,
                "alpha": args.alpha,
                "hidden": args.hidden,
                "m2_z_dim": args.m2_z_dim,
                "batch": args.batch,
                "labelled_batch": args.labelled_batch,
                "labelled_passes": args.labelled_passes,
                "resample": args.resample,
                "lr": args.lr,
                "init_scale": init_scale,
                "seed": args.seed,
                "anchor_kingma2014": {"m1m2": 0.0333, "m2": 0.1197},
            }
        ),
        flush=True,
    )
