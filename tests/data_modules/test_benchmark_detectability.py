"""Each training family of the built-in benchmark is learnable: a small CNN trained for 200 steps
on CPU separates it from reals on held-out photo-domain test crops (AUC well above chance).

The images are made in memory with the generator's own functions and keys (same crops, same
family randomness as the files on disk); the full specialist pipeline is tested elsewhere."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from data_modules.benchmark.families import apply_family
from data_modules.benchmark.sources import item_rng, sample_video

STEPS = 200


def rank_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mann–Whitney AUC with average ranks for ties (float64)."""
    scores = np.asarray(scores, np.float64)
    labels = np.asarray(labels)
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    for value in np.unique(scores):
        tie = scores == value
        ranks[tie] = ranks[tie].mean()
    n_pos, n_neg = int(labels.sum()), int((1 - labels).sum())
    return float((ranks[labels == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def test_rank_auc_matches_pairwise_count() -> None:
    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(size=60), 1)  # with ties
    labels = (rng.uniform(size=60) < 0.4).astype(int)
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairwise = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert rank_auc(scores, labels) == pytest.approx(pairwise, abs=1e-12)


def _data(family: str, split: str, n_videos: int, n_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    reals, fakes = [], []
    for i in range(n_videos):
        for j, img in enumerate(sample_video("photo", split, i, seed=0, n_frames=n_frames, size=64)):
            reals.append(img)
            fakes.append(apply_family(family, img, item_rng(0, "fake", family, "photo", split, f"{i:04d}", j)))
    x = torch.from_numpy(np.stack(reals + fakes)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    y = torch.tensor([0] * len(reals) + [1] * len(fakes))
    return x, y


class _MaxMeanPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.amax(dim=(2, 3)), x.mean(dim=(2, 3))], dim=1)


def _probe(width: int = 24) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, width, 4, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        _MaxMeanPool(), nn.Linear(2 * width, 2),
    )


@pytest.mark.parametrize("family", ["blend", "warp", "upsample"])
def test_training_family_is_detectable(family: str) -> None:
    x_train, y_train = _data(family, "train", 150, 2)   # 300 real + 300 fake crops
    x_test, y_test = _data(family, "test", 80, 1)       # disjoint test band: 80 + 80
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: one thread is fastest on a busy machine
    try:
        torch.manual_seed(0)
        net = _probe()
        opt = torch.optim.Adam(net.parameters(), lr=3e-3)
        gen = torch.Generator().manual_seed(0)
        for _ in range(STEPS):
            idx = torch.randint(0, len(x_train), (32,), generator=gen)
            loss = nn.functional.cross_entropy(net(x_train[idx]), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            scores = net(x_test).softmax(dim=1)[:, 1].numpy()
    finally:
        torch.set_num_threads(threads)
    auc = rank_auc(scores, y_test.numpy())
    print(f"{family}: AUC {auc:.3f}")
    assert auc > 0.75, f"{family}: in-distribution AUC {auc:.3f} after {STEPS} steps"
