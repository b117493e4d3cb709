"""data_modules.faces on a real photograph (skimage astronaut) and a video built from it."""

from __future__ import annotations

import numpy as np
import pytest

from media_helpers import ASTRONAUT_BOX, astronaut, needs_faces, two_faces

pytestmark = needs_faces


@pytest.fixture(scope="module")
def extractor():
    from data_modules.faces import FaceExtractor

    return FaceExtractor()


def test_template_is_arcface_shrunk_toward_centre():
    from data_modules.faces import ARCFACE_TEMPLATE_112, alignment_template

    t = alignment_template(256, 1.3)
    c = np.array([128.0, 128.0])
    # scale 1 is the plain 112-px template scaled to 256; 1.3 shrinks every point's offset from the centre
    np.testing.assert_allclose(alignment_template(256, 1.0), ARCFACE_TEMPLATE_112 * 256 / 112)
    np.testing.assert_allclose(t - c, (ARCFACE_TEMPLATE_112 * 256 / 112 - c) / 1.3)
    assert t[0, 0] < t[1, 0] and t[3, 1] > t[2, 1] > t[0, 1]  # eyes left/right, nose below, mouth lowest


def test_sample_indices_match_df40_linspace():
    from data_modules.faces import sample_indices

    assert sample_indices(300, 32) == [int(x) for x in np.linspace(0, 299, 32).astype(int)]
    assert sample_indices(300, 32)[0] == 0 and sample_indices(300, 32)[-1] == 299
    assert sample_indices(10, 32) == list(range(10))
    assert sample_indices(0, 32) == []


def test_astronaut_box_landmarks_alignment(extractor):
    from data_modules.faces import apply_affine, five_points

    img = astronaut()
    assert extractor.detect(img)[0] == ASTRONAUT_BOX
    faces, reason = extractor.faces(img)
    assert reason is None and len(faces) == 1
    face = faces[0]
    assert face.box == ASTRONAUT_BOX and face.crop.shape == (256, 256, 3) and face.crop.dtype == np.uint8
    # eye corners of the 68-point model where the issue measured them (upper lids 37/44 are close by)
    assert np.abs(face.landmarks[36] - (195, 101)).max() <= 3 and np.abs(face.landmarks[45] - (255, 105)).max() <= 3
    template = extractor.template
    mapped = apply_affine(face.matrix, face.points5)
    # least-squares similarity: centroids coincide; each point lands within a few pixels
    np.testing.assert_allclose(mapped.mean(0), template.mean(0), atol=1e-6)
    dist = np.linalg.norm(mapped - template, axis=1)
    assert dist.max() < 14 and dist.mean() < 8, dist
    # on the crop itself, re-detected landmarks agree with the mapped ones (the warp moved the pixels)
    redetected = five_points(face.crop_landmarks)
    assert np.linalg.norm(redetected - mapped, axis=1).max() < 4
    assert np.linalg.norm(redetected - template, axis=1).max() < 14


def test_crop_is_deterministic(extractor):
    from data_modules.faces import FaceExtractor

    a = extractor.faces(astronaut())[0][0]
    b = FaceExtractor().faces(astronaut())[0][0]
    assert np.array_equal(a.crop, b.crop) and np.array_equal(a.matrix, b.matrix)


def test_all_faces_option_and_no_face(extractor):
    from data_modules.faces import FaceExtractor

    image, boxes = two_faces()
    every = FaceExtractor(all_faces=True).faces(image)[0]
    assert len(every) == 2 and every[0].area > every[1].area  # largest first
    for face, box in zip(every, boxes):
        assert np.abs(np.array(face.box) - box).max() <= 10, (face.box, box)  # HOG windows are coarse
    largest = extractor.faces(image)[0]
    assert len(largest) == 1 and largest[0].box == every[0].box
    faces, reason = extractor.faces(np.full((200, 200, 3), 127, np.uint8))
    assert faces == [] and reason == "no face detected"


def test_video_uniform_sampling_and_boxes_follow_motion(media_dir, extractor):
    from data_modules.faces import extract_file, sample_indices

    n = media_dir["n_frames"]
    result = extract_file(media_dir["video"], extractor, n_frames=8)
    assert result.error is None and result.n_total == n
    assert [f.index for f in result.frames] == sample_indices(n, 8)
    assert [f.index for f in result.frames] != list(range(8))  # spread over the whole video
    assert all(len(f.faces) == 1 for f in result.frames)
    for fr in result.frames:
        expected = np.array(media_dir["boxes"][fr.index])
        got = np.array(fr.faces[0].box, dtype=float)
        assert np.abs(got - expected).max() < 14, (fr.index, got, expected)
    xs = [f.faces[0].box[0] for f in result.frames]
    assert xs == sorted(xs) and xs[-1] - xs[0] > 80  # the face moves right by 110 px
    assert result.frames[1].time == pytest.approx(result.frames[1].index / 10, abs=1e-6)


def test_bad_media_reasons(tmp_path, media_dir, extractor):
    from data_modules.faces import extract_file

    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 20)
    data = media_dir["video"].read_bytes()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(data[: len(data) // 2])
    reasons = {p.name: extract_file(p, extractor, 8).error for p in (empty, text, truncated)}
    assert reasons["empty.mp4"] == "empty file (0 bytes)"
    assert reasons["notes.mp4"].startswith("not a video file (FFmpeg: ")
    assert reasons["truncated.mp4"].startswith("broken or truncated video (FFmpeg: ")
    assert extract_file(tmp_path / "missing.mp4", extractor, 8).error == "file does not exist"
    assert "unsupported file type" in extract_file(text.with_suffix(".txt"), extractor, 8).error
