import hashlib
from dataclasses import astuple

import numpy as np
import pytest
from PIL import Image

from advcam.datasets import (
    SPLITS, DatasetError, ImageReadError, index_tree, load_image, load_prepared, prepare, select_identities,
)
from advcam.faces import (
    IDENTITY_RANGES, PARTS, distinct_identities, render_face, sample_identity, synthesize,
)


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.png")):
        h.update(p.relative_to(root).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def test_synth_is_byte_identical_per_seed(tmp_path):
    a = synthesize(tmp_path / "a", identities=3, images_per_identity=3, size=32, seed=11)
    b = synthesize(tmp_path / "b", identities=3, images_per_identity=3, size=32, seed=11)
    c = synthesize(tmp_path / "c", identities=3, images_per_identity=3, size=32, seed=12)
    d = synthesize(tmp_path / "d", identities=3, images_per_identity=3, size=32, seed=11, workers=2)
    assert _digest(a) == _digest(b) == _digest(d) != _digest(c)
    assert not list(tmp_path.glob(".*tmp*"))


def test_synth_masks_and_layout(tiny_tree):
    ids = sorted(p.name for p in tiny_tree.iterdir() if p.is_dir())
    assert ids == ["id0000", "id0001", "id0002", "id0003"]
    mask = np.asarray(Image.open(tiny_tree / "id0000" / "0000.mask.png"))
    assert set(np.unique(mask)) <= {0, *PARTS.values()}
    assert {PARTS["eyes"], PARTS["mouth"]} <= set(np.unique(mask))
    index = index_tree(tiny_tree)
    assert all(not f.endswith(".mask.png") for v in index.values() for f in v)
    assert len(index["id0000"]) == 12


def test_identity_is_not_in_the_colours(tmp_path):
    # mean colour of an image must not identify its identity: nearest-centroid on mean RGB stays near chance
    root = synthesize(tmp_path / "s", identities=5, images_per_identity=30, size=32, seed=0)
    feats, labels = [], []
    for k, d in enumerate(sorted(p for p in root.iterdir() if p.is_dir())):
        for f in sorted(d.glob("*.png")):
            feats.append(np.asarray(Image.open(f), float).mean((0, 1)))
            labels.append(k)
    feats, labels = np.array(feats), np.array(labels)
    train = np.arange(len(labels)) % 2 == 0
    cent = np.stack([feats[train & (labels == k)].mean(0) for k in range(5)])
    pred = np.argmin(((feats[~train, None] - cent[None]) ** 2).sum(-1), 1)
    assert (pred == labels[~train]).mean() < 0.45  # chance is 0.2


def test_prepare_split_and_store(tiny_tree, tiny_store):
    ds = load_prepared(tiny_store)
    assert ds.images.shape == (48, 48, 48, 3) and ds.images.dtype == np.uint8
    assert ds.identities == ["id0000", "id0001", "id0002", "id0003"]
    for k in range(4):
        codes = ds.split[ds.labels == k]
        assert (codes == SPLITS["test"]).sum() == 1 and (codes == SPLITS["val"]).sum() == 1
    assert ds.attrs["size"] == 48 and ds.attrs["seed"] == 0
    # same arguments → same store content
    again = tiny_store.with_name("again.h5")
    prepare(tiny_tree, again, size=48, identities=4, min_images=10, seed=0)
    ds2 = load_prepared(again)
    assert np.array_equal(ds.images, ds2.images) and np.array_equal(ds.split, ds2.split)


def test_missing_root(tmp_path):
    with pytest.raises(DatasetError, match="nowhere"):
        index_tree(tmp_path / "nowhere")


def test_too_few_images(tiny_tree, tmp_path):
    with pytest.raises(DatasetError, match="at least 50 images"):
        prepare(tiny_tree, tmp_path / "x.h5", size=32, min_images=50)
    with pytest.raises(DatasetError, match="need 9 identities"):
        select_identities(index_tree(tiny_tree), 9, 5, 0)


def test_broken_image_named_or_skipped(tmp_path):
    root = synthesize(tmp_path / "s", identities=2, images_per_identity=6, size=32, seed=0)
    bad = root / "id0001" / "0003.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(ImageReadError, match="0003.png"):
        prepare(root, tmp_path / "x.h5", size=32, min_images=3)
    assert not (tmp_path / "x.h5").exists()
    rep = prepare(root, tmp_path / "x.h5", size=32, min_images=3, skip_broken=True)
    assert rep["skipped_files"] == ["id0001/0003.png"] and rep["n"] == 11


def test_loose_box_crop(tmp_path):
    img = np.zeros((100, 200, 3), np.uint8)
    img[20:60, 120:160] = 255  # a white square where the "face" box is
    root = tmp_path / "vgg"
    (root / "n000001").mkdir(parents=True)
    for j in range(3):
        Image.fromarray(img).save(root / "n000001" / f"000{j}_01.jpg", quality=100)
        Image.fromarray(img).save(root / "n000002" / f"000{j}_01.jpg", quality=100) if (root / "n000002").mkdir(exist_ok=True) is None else None
    (root / "bb_landmark").mkdir()
    rows = ["NAME_ID,X,Y,W,H"] + [f"{i}/000{j}_01,120,20,40,40" for i in ("n000001", "n000002") for j in range(3)]
    (root / "bb_landmark" / "loose_bb_train.csv").write_text("\n".join(rows) + "\n")
    out = load_image(root / "n000001" / "0000_01.jpg", 32, (120, 20, 40, 40), margin=0.0)
    assert out.mean() > 240  # the crop is the white box
    prepare(root, tmp_path / "v.h5", size=32, min_images=3, split=(0.34, 0.33, 0.33), margin=0.0)
    assert load_prepared(tmp_path / "v.h5").images.mean() > 240
    assert load_image(root / "n000001" / "0000_01.jpg", 32).mean() < 128  # centred square without a box


@pytest.mark.parametrize("side", [64, 40])  # with the limit at 1100 px: 64² is over 2x it (PIL's error), 40² over 1x (its warning)
def test_decompression_bomb_is_a_named_read_error_and_skippable(tmp_path, monkeypatch, side):
    root = synthesize(tmp_path / "s", identities=2, images_per_identity=6, size=32, seed=0)
    bomb = root / "id0000" / "0002.png"
    Image.new("RGB", (side, side)).save(bomb)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1100)  # the other images are 32² = 1024 px: under it
    with pytest.raises(ImageReadError, match="0002.png.*decompression bomb"):
        prepare(root, tmp_path / "x.h5", size=32, min_images=3)
    assert not (tmp_path / "x.h5").exists()
    rep = prepare(root, tmp_path / "x.h5", size=32, min_images=3, skip_broken=True)
    assert rep["skipped_files"] == ["id0000/0002.png"] and rep["skipped"] == 1


def test_pose_zero_renders_aligned_faces():
    """pose=0: every image of an identity has its nose (drawn from the identity's geometry alone) in one place;
    pose=1 (unaligned) moves it per image. The default is pose=1, and pose outside [0, 1] is refused."""
    ident = sample_identity(0, 0)
    masks = {p: [render_face(ident, 48, np.random.default_rng(j), pose=p)[1] == PARTS["nose"] for j in range(3)]
             for p in (0.0, 1.0)}
    assert all(np.array_equal(masks[0.0][0], m) for m in masks[0.0][1:])
    assert not all(np.array_equal(masks[1.0][0], m) for m in masks[1.0][1:])
    img, mask = render_face(ident, 48, np.random.default_rng(5))
    img1, mask1 = render_face(ident, 48, np.random.default_rng(5), pose=1.0)
    assert np.array_equal(img, img1) and np.array_equal(mask, mask1)
    with pytest.raises(ValueError, match="pose"):
        render_face(ident, 48, np.random.default_rng(0), pose=1.5)


def test_distinct_identities_spread_the_population():
    """Farthest-point selection: the closest pair of the picked identities is farther apart than the closest
    pair of the first draws; pool=1 gives the first draws; same arguments, same identities."""
    lo, hi = np.array(IDENTITY_RANGES).T

    def closest(idents):
        z = (np.array([astuple(i) for i in idents]) - lo) / (hi - lo)
        d = np.linalg.norm(z[:, None] - z[None], axis=-1)
        return d[np.triu_indices(len(z), 1)].min()

    seed = int(np.random.default_rng().integers(1000))
    picked = distinct_identities(seed, 6)
    assert picked == distinct_identities(seed, 6)
    assert distinct_identities(seed, 6, pool=1) == [sample_identity(seed, k) for k in range(6)]
    assert closest(picked) > closest(distinct_identities(seed, 6, pool=1))
