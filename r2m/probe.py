"""Linear probes of a base θ0 on real-only tasks.

Two kinds of task, each on two domains — the *archive* domain (7 sources: ``camera``, ``coins``,
``moon``, ``brick``, ``grass``, ``gravel``, LFW faces — grey photographs through another acquisition
pipeline; no photograph of the pretraining domain) and the *photo* domain (the 6 pretraining
photographs):

``source`` (content)
    Which source photograph a crop comes from.
``noise`` (fine texture)
    Which of 4 levels of Gaussian sensor noise (0, 2, 4, 8 grey levels; one per crop, balanced)
    was added to a real crop. The level is only visible in the pixel-level statistics, the ones
    the forgery families' artefacts live in. (The ``denoise`` pretext trains on other levels,
    5–25 grey, and never classifies them.)

No forgery family is used. The probe is a logistic regression on frozen pooled features
(:func:`r2m.models.pretrain.linear_probe`), fitted on crops of the photographs' training band and
scored on their test band (disjoint pixels; LFW faces split by index). The same architecture with
a random initialisation (same seed) is the reference:

    python -m r2m.probe .cache/pretrained/pretrained-<key>.safetensors

(It lives in ``r2m`` because it joins the benchmark's data and the models, which never import each other.)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["probe_data", "probe_base", "with_noise_levels", "NOISE_PROBE_LEVELS"]

NOISE_PROBE_LEVELS = (0.0, 2.0, 4.0, 8.0)  # grey levels of the texture probe's classes


def probe_data(n_train: int = 280, n_test: int = 140, size: int = 64, seed: int = 0,
               domain: str = "archive") -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor], list[str]]:
    """``(train, test, classes)``: uint8 ``[N,3,S,S]`` crops (one frame per video) and source labels."""
    from data_modules.benchmark.sources import DOMAINS, sample_video_info

    classes = list(DOMAINS[domain].sources)

    def draw(split: str, band: str, n: int):
        images, labels = [], []
        for i in range(n):
            frames, info = sample_video_info(domain, f"probe-{split}", i, seed=seed, n_frames=1, size=size, band=band)
            images.append(frames[0])
            labels.append(classes.index(info["source"]))
        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
        return x, torch.tensor(labels)

    return draw("train", "train", n_train), draw("test", "test", n_test), classes


def with_noise_levels(images: torch.Tensor, seed: int,
                      levels: Sequence[float] = NOISE_PROBE_LEVELS) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 ``[N,3,S,S]`` crops → (the crops with Gaussian noise of level ``levels[i % 4]`` added,
    rounded and clipped to uint8; labels ``i % len(levels)``): the texture probe's task."""
    labels = torch.arange(len(images)) % len(levels)
    g = torch.Generator().manual_seed(int(seed))
    sigma = torch.tensor([float(v) for v in levels])[labels].view(-1, 1, 1, 1)
    noisy = images.float() + sigma * torch.randn(images.shape, generator=g)
    return noisy.round().clamp(0, 255).to(torch.uint8), labels


def probe_base(base: str | os.PathLike, n_train: int = 280, n_test: int = 140, seed: int = 0,
               mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> dict[str, Any]:
    """Linear-probe accuracy of the base file ``base`` and of a random initialisation of the same
    architecture on every task (``archive_source``, ``archive_noise``, ``photo_source``,
    ``photo_noise``), with the task's chance level (majority class of the test set)."""
    from data_modules.transforms import resolve_mean_std
    from r2m.checkpoints import read_metadata
    from r2m.models.backbone import build_backbone_from_spec
    from r2m.models.pretrain import extract_features, linear_probe

    meta = read_metadata(base)
    spec = meta["model_spec"]
    size = int(spec["image_size"])
    m, s = resolve_mean_std(mean, std)
    out: dict[str, Any] = {}
    for domain in ("archive", "photo"):
        (x, y), (xt, yt), classes = probe_data(n_train, n_test, size=size, seed=seed, domain=domain)
        tasks = {"source": ((x, y), (xt, yt), f"{domain} source ({len(classes)} classes)"),
                 "noise": (with_noise_levels(x, seed + 1), with_noise_levels(xt, seed + 2),
                           f"{domain} noise level ({len(NOISE_PROBE_LEVELS)} classes)")}
        backbones = {}
        for name, pretrained in (("theta0", os.fspath(base)), ("random_init", None)):
            torch.manual_seed(seed)
            backbones[name] = build_backbone_from_spec(spec, pretrained=pretrained)[0]
        for kind, ((a, ya), (b, yb), label) in tasks.items():
            res: dict[str, Any] = {"task": label, "n_train": len(ya), "n_test": len(yb),
                                   "chance": float(np.bincount(yb.numpy()).max() / len(yb))}
            if kind == "source":
                res["classes"] = classes
            for name, backbone in backbones.items():
                train = extract_features(backbone, [{"image": a, "label": ya}], m, s)
                test = extract_features(backbone, [{"image": b, "label": yb}], m, s)
                res[name] = linear_probe(train, test)
            out[f"{domain}_{kind}"] = res
    return out


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m r2m.probe", description=__doc__.splitlines()[0])
    parser.add_argument("base", help="an r2m base file (e.g. .cache/pretrained/pretrained-<key>.safetensors)")
    parser.add_argument("--n-train", type=int, default=280)
    parser.add_argument("--n-test", type=int, default=140)
    args = parser.parse_args(argv)
    for res in probe_base(args.base, n_train=args.n_train, n_test=args.n_test).values():
        print(f"linear probe, {res['task']}, {res['n_train']} train / {res['n_test']} test crops: "
              f"theta0 {res['theta0']:.3f}   random init {res['random_init']:.3f}   chance {res['chance']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
