"""A data module stand-in implementing only the carve contract (HELPERS.md #1), for r2m.evaldata tests."""

from __future__ import annotations

import hashlib

IDS = {"fs": ["r1", "r2", "r3", "r4", "a1", "a2", "a3", "a4"], "fr": ["r1", "r2", "r3", "r4", "b1", "b2", "b3", "b4"]}


def _u(*parts) -> float:
    return int(hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:8], 16) / 2**32


class FakeCarveDM:
    def __init__(self, family="fs", val_fraction=0.5, seed=0, scheme="identity", **_):
        self.family, self.val_fraction, self.seed, self.scheme = family, float(val_fraction), int(seed), scheme

    def setup(self, stage=None):
        fams = sorted(IDS) if self.family == "joint" else [self.family]
        self._val, self._train = set(), set()
        for fam in fams:
            for i in IDS[fam]:
                # "identity": a deterministic function of (seed, identity) only; "per_family": the old,
                # leaking carve (a shared identity can be validation in one family, training in another)
                key = (self.seed, i) if self.scheme == "identity" else (self.seed, fam, i)
                (self._val if _u(*key) < self.val_fraction else self._train).add(i)
        self._train -= self._val if self.scheme == "identity" else set()

    def carve_record(self):
        vals = sorted(self._val)
        return {"scheme": self.scheme, "seed": self.seed, "val_fraction": self.val_fraction, "identity_rule": "test",
                "val_videos_sha256": hashlib.sha256("\n".join(vals).encode()).hexdigest(),
                "n_train_videos": len(self._train), "n_val_videos": len(vals), "n_left_out": 0}

    def split_identities(self):
        return {"train": frozenset(self._train), "val": frozenset(self._val)}
