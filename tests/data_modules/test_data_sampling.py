"""Frame sampling per video and the carved validation split."""

import pytest

from data_modules.index import VideoRecord
from data_modules.sampling import carve_validation, select_frames, uniform_indices


def _reference_uniform(length: int, n: int) -> list[int]:
    """Independent float64 reference: n points evenly spaced on [0, length-1], rounded half up."""
    if n >= length:
        return list(range(length))
    if n == 1:
        return [0]
    step = (length - 1) / (n - 1)
    return [int(i * step + 0.5) for i in range(n)]


@pytest.mark.parametrize("length", [1, 2, 5, 8, 31, 32, 33, 100])
@pytest.mark.parametrize("n", [1, 2, 3, 7, 8, 32])
def test_uniform_indices_match_reference_and_span_video(length, n):
    idx = uniform_indices(length, n)
    assert idx == _reference_uniform(length, n)
    assert len(idx) == min(n, length) and idx == sorted(set(idx))
    if 1 < n <= length:
        assert idx[0] == 0 and idx[-1] == length - 1
        gaps = [b - a for a, b in zip(idx, idx[1:])]
        assert max(gaps) - min(gaps) <= 1  # evenly spaced


def test_select_frames_modes():
    frames = [f"{k:03d}.png" for k in range(32)]
    assert select_frames(frames, 8, "first") == frames[:8]
    uni = select_frames(frames, 8, "uniform")
    assert uni[0] == "000.png" and uni[-1] == "031.png" and len(uni) == 8
    assert select_frames(frames, None) == frames
    assert select_frames(frames[:3], 8) == frames[:3]
    with pytest.raises(ValueError, match="frame_sampling"):
        select_frames(frames, 2, "random")
    with pytest.raises(ValueError, match="positive"):
        select_frames(frames, 0)


def _records(dataset: str, n_real: int, n_fake: int) -> list[VideoRecord]:
    out = []
    for label, n in ((0, n_real), (1, n_fake)):
        for i in range(n):
            out.append(VideoRecord(dataset, f"m{label}", f"{dataset}_{label}", label, f"v{i:03d}", "train", None,
                                   [f"{dataset}/{label}/{i}/{k}.png" for k in range(3)]))
    return out


def test_carve_validation_deterministic_disjoint_stratified():
    recs = _records("A", 20, 40) + _records("B", 10, 30)
    tr1, va1 = carve_validation(recs, 0.1, seed=7)
    tr2, va2 = carve_validation(list(recs), 0.1, seed=7)
    assert [r.key for r in va1] == [r.key for r in va2] and [r.key for r in tr1] == [r.key for r in tr2]
    assert {r.key for r in tr1}.isdisjoint({r.key for r in va1})
    assert len(tr1) + len(va1) == len(recs)
    count = {(d, lab): sum(1 for r in va1 if (r.dataset, r.label) == (d, lab)) for d in "AB" for lab in (0, 1)}
    assert count == {("A", 0): 2, ("A", 1): 4, ("B", 0): 1, ("B", 1): 3}
    _, va3 = carve_validation(recs, 0.1, seed=8)
    assert {r.key for r in va3} != {r.key for r in va1}


def test_carve_of_one_dataset_does_not_depend_on_others():
    a = _records("A", 20, 40)
    _, va_alone = carve_validation(a, 0.2, seed=3)
    _, va_joint = carve_validation(_records("B", 7, 9) + a, 0.2, seed=3)
    assert {r.key for r in va_alone} == {r.key for r in va_joint if r.dataset == "A"}


def test_carve_edge_cases():
    recs = _records("A", 1, 3)
    tr, va = carve_validation(recs, 0.1, seed=0)
    assert [r.label for r in va] == [1] and len(tr) == 3  # single real video stays in train
    tr, va = carve_validation(recs, 0.0, seed=0)
    assert va == [] and len(tr) == 4
    with pytest.raises(ValueError, match="val_fraction"):
        carve_validation(recs, 1.0)
