"""Seeded synthetic face identities, written as an identity-per-folder image tree (VGGFace2 layout).

Identity lives in the inner features — eye spacing, size and shape, brow angle/thickness/height, nose
length and width, mouth width/height/lip thickness, face proportions — drawn once per identity. Skin,
hair, iris and background colours come from palettes shared by all identities and are drawn anew for
every image, as are pose (rotation, shift, scale), lighting (brightness and a directional gradient),
expression (smile, brow raise, eye opening) and pixel noise, so colour alone never gives the answer.

Because we know where each part is drawn, :func:`render_face` can also return a part mask
(0 background/skin, 1 eyes, 2 brows, 3 nose, 4 mouth).
"""
from __future__ import annotations

import json
import math
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, astuple, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .errors import InputError

__all__ = ["Identity", "PARTS", "IDENTITY_RANGES", "POSE_RANGES", "sample_identity", "distinct_identities", "render_face", "synthesize"]

#: Mask label of each face part.
PARTS = {"eyes": 1, "brows": 2, "nose": 3, "mouth": 4}

SKIN = [(255, 224, 196), (241, 194, 160), (224, 172, 132), (198, 134, 100), (141, 85, 54), (92, 60, 40)]
HAIR = [(20, 17, 15), (60, 40, 30), (110, 70, 40), (180, 140, 90), (220, 200, 150), (120, 120, 120), (150, 50, 30)]
IRIS = [(60, 40, 20), (40, 90, 140), (60, 110, 60), (100, 80, 50), (30, 30, 30)]
BACKGROUND = [(200, 200, 205), (120, 150, 190), (190, 170, 140), (90, 100, 90), (230, 230, 220), (60, 60, 80), (170, 120, 120)]
LIPS = [(170, 80, 80), (150, 60, 70), (190, 110, 100), (120, 60, 50)]


@dataclass(frozen=True)
class Identity:
    """Inner-feature geometry of one identity, in units of the face height (1.0)."""

    face_aspect: float  # face width / height
    eye_y: float  # eye line below face centre (negative = above)
    eye_gap: float  # half distance between eye centres
    eye_w: float
    eye_h: float
    brow_gap: float  # brow above the eye
    brow_angle: float  # degrees, positive = outer end up
    brow_thick: float
    brow_len: float
    nose_len: float
    nose_w: float
    mouth_y: float
    mouth_w: float
    mouth_h: float  # lip thickness
    smile: float  # resting curvature


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in keys]))


#: Range (low, high) of every identity parameter, in the order of :class:`Identity`'s fields.
IDENTITY_RANGES: tuple[tuple[float, float], ...] = (
    (0.64, 0.88),  # face_aspect
    (-0.18, -0.04),  # eye_y
    (0.12, 0.25),  # eye_gap
    (0.06, 0.18),  # eye_w
    (0.025, 0.09),  # eye_h
    (0.04, 0.14),  # brow_gap
    (-25, 25),  # brow_angle
    (0.015, 0.07),  # brow_thick
    (0.09, 0.22),  # brow_len
    (0.08, 0.28),  # nose_len
    (0.04, 0.16),  # nose_w
    (0.2, 0.34),  # mouth_y
    (0.1, 0.34),  # mouth_w
    (0.015, 0.08),  # mouth_h
    (-0.05, 0.06),  # smile
)


def sample_identity(seed: int, index: int) -> Identity:
    """The identity ``index`` of the population drawn with ``seed`` (same arguments → same identity):
    every parameter uniform in its :data:`IDENTITY_RANGES` entry."""
    r = _rng(seed, 1, index)
    return Identity(*(float(r.uniform(lo, hi)) for lo, hi in IDENTITY_RANGES))


def distinct_identities(seed: int, n: int, pool: int = 8) -> list[Identity]:
    """``n`` identities spread over the parameter space: farthest-point selection among the first
    ``pool``·n of :func:`sample_identity` (parameters scaled to [0, 1] by their ranges; the first candidate
    starts, then each pick is the candidate farthest from those already picked). Seeded, so the same
    arguments give the same identities. With ``pool=1`` it is the first ``n`` draws.

    Random draws put some pairs of faces close together (seed 0, 6 identities: the closest pair is 1.23
    apart in the scaled space, the farthest 1.98); those pairs are what a network trained from scratch
    separates last. Selection from 48 candidates makes the closest pair 1.68 apart."""
    cands = [sample_identity(seed, k) for k in range(max(1, pool) * n)]
    if pool <= 1:
        return cands[:n]
    lo = np.array([r[0] for r in IDENTITY_RANGES])
    hi = np.array([r[1] for r in IDENTITY_RANGES])
    z = (np.array([astuple(c) for c in cands]) - lo) / (hi - lo)
    picked = [0]
    nearest = np.linalg.norm(z - z[0], axis=1)
    while len(picked) < n:
        k = int(nearest.argmax())
        picked.append(k)
        nearest = np.minimum(nearest, np.linalg.norm(z - z[k], axis=1))
    return [cands[k] for k in picked]


def _rot(px: float, py: float, cx: float, cy: float, deg: float) -> tuple[float, float]:
    t = math.radians(deg)
    dx, dy = px - cx, py - cy
    return cx + dx * math.cos(t) - dy * math.sin(t), cy + dx * math.sin(t) + dy * math.cos(t)


#: The pose drawn per image at ``pose=1``: rotation (degrees), scale, shift (fraction of the side), each uniform.
POSE_RANGES = {"angle": (-7.0, 7.0), "scale": (0.93, 1.04), "shift": (-0.035, 0.035)}


def render_face(
    ident: Identity, size: int, rng: np.random.Generator, supersample: int = 4, pose: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one image of ``ident``: returns (image (size,size,3) uint8, part mask (size,size) uint8).

    ``rng`` supplies every per-image draw (colours, pose, lighting, expression, noise). ``pose`` in [0, 1]
    scales each pose draw's distance from the middle of its :data:`POSE_RANGES` range: 1 = unaligned faces
    (rotated up to ±7°, scaled, shifted), 0 = aligned faces (upright, centred, one scale), as a face
    recogniser's alignment step gives. The same draws are made whatever ``pose`` is, so every other
    attribute of an image stays the same.
    """
    if not 0 <= pose <= 1:
        raise InputError(f"pose must lie in [0, 1], got {pose}")

    def jitter(name: str, n: int | None = None):
        lo, hi = POSE_RANGES[name]
        u = rng.uniform(lo, hi, n)
        mid = (lo + hi) / 2
        return u if pose == 1 else mid + (u - mid) * pose

    S = size * supersample
    skin = np.array(SKIN[rng.integers(len(SKIN))], float) * rng.uniform(0.92, 1.08)
    hair = HAIR[rng.integers(len(HAIR))]
    iris = IRIS[rng.integers(len(IRIS))]
    bg = BACKGROUND[rng.integers(len(BACKGROUND))]
    lips = LIPS[rng.integers(len(LIPS))]
    angle = float(jitter("angle"))
    scale = float(jitter("scale"))
    shift = jitter("shift", 2)
    smile = ident.smile + rng.uniform(-0.02, 0.02)
    raise_ = rng.uniform(-0.012, 0.012)
    open_ = rng.uniform(0.8, 1.15)
    hair_len = rng.uniform(0.2, 0.55)

    H = 0.8 * S * scale  # face height in pixels
    W = H * ident.face_aspect
    cx, cy = S / 2 + shift[0] * S, S / 2 + 0.04 * S + shift[1] * S

    img = Image.new("RGB", (S, S), bg)
    mask = Image.new("L", (S, S), 0)
    d, m = ImageDraw.Draw(img), ImageDraw.Draw(mask)

    def P(x: float, y: float) -> tuple[float, float]:  # face units → rotated pixels
        return _rot(cx + x * H, cy + y * H, cx, cy, angle)

    def ellipse_poly(x: float, y: float, rx: float, ry: float, n: int = 48, start=0.0, stop=2 * math.pi):
        ts = np.linspace(start, stop, n)
        return [P(x + rx * math.cos(t), y + ry * math.sin(t)) for t in ts]

    # hair behind the head, then face
    d.polygon(ellipse_poly(0, -0.08, ident.face_aspect / 2 + 0.06, 0.5 + 0.04 + hair_len * 0.15), fill=hair)
    d.polygon(ellipse_poly(0, 0, ident.face_aspect / 2, 0.5), fill=tuple(int(c) for c in skin.clip(0, 255)))
    d.polygon(ellipse_poly(0, -0.4, ident.face_aspect / 2 + 0.01, 0.16, start=math.pi, stop=2 * math.pi), fill=hair)

    for side in (-1, 1):
        ex, ey = side * ident.eye_gap, ident.eye_y
        eye = ellipse_poly(ex, ey, ident.eye_w / 2, ident.eye_h / 2 * open_)
        d.polygon(eye, fill=(245, 245, 240))
        m.polygon(eye, fill=PARTS["eyes"])
        r = min(ident.eye_w, ident.eye_h * open_) * 0.42
        d.polygon(ellipse_poly(ex, ey, r, r), fill=iris)
        d.polygon(ellipse_poly(ex, ey, r * 0.45, r * 0.45), fill=(10, 10, 10))
        # brow: a thick bar rotated by the identity's angle (mirrored per side)
        by = ey - ident.eye_h / 2 - ident.brow_gap - raise_
        a = math.radians(ident.brow_angle) * side
        hl, ht = ident.brow_len / 2, ident.brow_thick / 2
        corners = [(-hl, -ht), (hl, -ht), (hl, ht), (-hl, ht)]
        brow = [P(ex + cx_ * math.cos(a) + cy_ * math.sin(a), by - cx_ * math.sin(a) + cy_ * math.cos(a)) for cx_, cy_ in corners]
        d.polygon(brow, fill=hair)
        m.polygon(brow, fill=PARTS["brows"])

    shade = tuple(int(c) for c in (skin * 0.72).clip(0, 255))
    top = ident.eye_y + 0.02
    nose = [P(0, top), P(ident.nose_w / 2, top + ident.nose_len), P(-ident.nose_w / 2, top + ident.nose_len)]
    d.polygon(nose, fill=shade)
    m.polygon(nose, fill=PARTS["nose"])
    for side in (-1, 1):
        d.polygon(ellipse_poly(side * ident.nose_w * 0.3, top + ident.nose_len, ident.nose_w * 0.14, ident.nose_w * 0.09), fill=(60, 35, 30))

    my, mw, mh = ident.mouth_y, ident.mouth_w / 2, ident.mouth_h
    xs = np.linspace(-mw, mw, 25)
    curve = [my + smile * (1 - (x / mw) ** 2) for x in xs]  # smile > 0 lifts the corners
    upper = [P(x, yv - mh / 2) for x, yv in zip(xs, curve)]
    lower = [P(x, yv + mh / 2 + mh * 0.6 * (1 - (x / mw) ** 2)) for x, yv in zip(xs[::-1], curve[::-1])]
    mouth = upper + lower
    d.polygon(mouth, fill=lips)
    m.polygon(mouth, fill=PARTS["mouth"])

    im = img.resize((size, size), Image.Resampling.BOX)
    mk = mask.resize((size, size), Image.Resampling.NEAREST)
    a = np.asarray(im, dtype=np.float32)
    # lighting: global gain and a linear gradient in a random direction
    theta = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1) - 0.5
    gain = rng.uniform(0.75, 1.15) + rng.uniform(0.0, 0.5) * (np.cos(theta) * xx + np.sin(theta) * yy)
    a = a * gain[..., None] + rng.normal(0, rng.uniform(1, 5), a.shape)
    return np.clip(np.rint(a), 0, 255).astype(np.uint8), np.asarray(mk, dtype=np.uint8)


def _render_identity(job) -> None:
    folder, ident, k, n, size, seed, masks, pose = job
    folder.mkdir(parents=True)
    for j in range(n):
        img, mask = render_face(ident, size, _rng(seed, 2, k, j), pose=pose)
        Image.fromarray(img).save(folder / f"{j:04d}.png", optimize=False)
        if masks:
            Image.fromarray(mask).save(folder / f"{j:04d}.mask.png", optimize=False)


def synthesize(
    root: str | os.PathLike,
    identities: int = 10,
    images_per_identity: int = 40,
    size: int = 128,
    seed: int = 0,
    masks: bool = False,
    pool: int = 8,
    pose: float = 1.0,
    workers: int = 1,
) -> Path:
    """Write ``identities`` × ``images_per_identity`` PNGs to ``root/<identity>/<nnnn>.png``.

    The identities are :func:`distinct_identities` (``pool``: candidates per identity; 1 = the first draws).
    ``pose``: how much each face's pose varies, 0 (aligned) to 1 (see :func:`render_face`). ``workers``:
    processes rendering identities side by side (the files are the same for any count).
    With ``masks`` each image gets a part mask ``<nnnn>.mask.png`` beside it. The tree is built in a
    temporary folder and renamed onto ``root`` when complete; ``root/manifest.json`` records the
    arguments. Same arguments → byte-identical files. Returns ``root``.
    """
    if identities < 2:
        raise InputError(f"identities must be >= 2, got {identities}")
    if images_per_identity < 1:
        raise InputError(f"images_per_identity must be >= 1, got {images_per_identity}")
    if size < 16:
        raise InputError(f"size must be >= 16 pixels, got {size}")
    root = Path(root)
    tmp = root.with_name(f".{root.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        people = []
        jobs = []
        for k, ident in enumerate(distinct_identities(seed, identities, pool)):
            name = f"id{k:04d}"
            people.append({"name": name, **asdict(ident)})
            jobs.append((tmp / name, ident, k, images_per_identity, size, seed, masks, pose))
        if workers > 1 and len(jobs) > 1:
            # every image has its own seeded generator: the files do not depend on the worker count

            with ProcessPoolExecutor(min(workers, len(jobs))) as ex:
                list(ex.map(_render_identity, jobs))
        else:
            for job in jobs:
                _render_identity(job)
        manifest = {
            "generator": "advcam.faces",
            "identities": identities,
            "images_per_identity": images_per_identity,
            "size": size,
            "seed": seed,
            "pool": pool,
            "pose": pose,
            "masks": masks,
            "parts": PARTS,
            "people": people,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if root.exists():
            shutil.rmtree(root)
        root.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root
