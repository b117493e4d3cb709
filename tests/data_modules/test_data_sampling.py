"""Frame sampling per video."""

import pytest

from data_modules.sampling import select_frames, uniform_indices


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
