"""SynthPose painting: textures, backgrounds, occluders and the person painter (PIL only).

Everything is drawn twice: colours into an RGB image and an integer *part id* into an 'L' image of
the same size (0 = background). The id map is what the annotator reads to decide which keypoints
are visible and what the person's visible silhouette is, so labels always agree with the pixels.
Sizes are given in pixels per person height (``px``), so details scale with the resolution.
"""

from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageDraw

from .synth_figure import IDX, Figure, Projection

__all__ = ["Canvas", "PARTS", "Texture", "sample_look", "texture", "background", "occluder", "paint_person",
           "BACKGROUND_ID", "DISTRACTOR_ID", "OCCLUDER_ID", "PARTS_PER_PERSON", "FACE_MIN"]

BACKGROUND_ID, DISTRACTOR_ID, OCCLUDER_ID = 0, 254, 255
# A face feature is painted (and can be labelled visible) only when the camera-facing component of
# its surface normal exceeds this: eyes need a face turned to the camera, the nose shows in profile
# (it sticks out of the head's outline), ears show from the side and from the back.
FACE_MIN = {"nose": -0.1, "left_eye": 0.15, "right_eye": 0.15, "left_ear": -0.35, "right_ear": -0.35,
            "mouth": 0.2}
PARTS = ("torso", "pelvis", "neck", "head",
         "left_upper_arm", "right_upper_arm", "left_forearm", "right_forearm", "left_hand", "right_hand",
         "left_thigh", "right_thigh", "left_shin", "right_shin", "left_foot", "right_foot")
PART = {n: i for i, n in enumerate(PARTS)}
PARTS_PER_PERSON = len(PARTS)

SKIN = ((255, 224, 196), (241, 194, 160), (224, 172, 130), (198, 134, 96), (160, 102, 66),
        (120, 74, 48), (88, 54, 36))
HAIR = ((20, 16, 14), (60, 40, 25), (110, 75, 40), (190, 150, 90), (150, 60, 30), (140, 140, 140),
        (230, 220, 200))


# ---------------------------------------------------------------------------------------------
# colours and textures


def rand_color(rng, sat=(0.0, 1.0), val=(0.1, 1.0)) -> tuple[int, int, int]:
    h, s, v = rng.random(), rng.uniform(*sat), rng.uniform(*val)
    return tuple(int(255 * c) for c in colorsys.hsv_to_rgb(h, s, v))


def jitter(rng, c, amount=18) -> tuple[int, int, int]:
    return tuple(min(255, max(0, int(v + rng.normal(0, amount)))) for v in c)


def shade(c, f: float) -> tuple[int, int, int]:
    return tuple(min(255, max(0, int(v * f))) for v in c)


class Texture:
    """A lazily evaluated RGB texture in image coordinates: 'solid', 'stripes', 'check', 'dots' or
    'noise' (smooth blobs) in colours c1 / c2 with a pattern period of ``period`` pixels. Only the
    crop that is actually painted is computed (:meth:`crop`), and patterns stay continuous across
    the parts painted with the same texture (a shirt's torso and sleeves)."""

    KINDS = ("solid", "stripes", "check", "noise", "dots")

    def __init__(self, rng, c1, c2, kind: str, period: float, gain: float = 1.0):
        if kind not in self.KINDS:
            raise ValueError(f"unknown texture kind {kind!r}; expected one of {self.KINDS}")
        self.c1, self.c2 = np.array(c1, np.float32), np.array(c2, np.float32)
        self.kind, self.period, self.gain = kind, float(max(period, 1.5)), float(gain)
        self.angle = float(rng.uniform(0, np.pi))
        self.duty = float(rng.uniform(0.3, 0.6))
        self.grid = rng.random((16, 16)).astype(np.float32) if kind == "noise" else None

    def darker(self, f: float) -> "Texture":
        t = object.__new__(Texture)
        t.__dict__.update(self.__dict__)
        t.gain = self.gain * f
        return t

    def pattern(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """(h, w) mixing weight of c2 for the pixel block [x0, x1) x [y0, y1)."""
        xx = np.arange(x0, x1, dtype=np.float32)[None, :] / self.period  # (1, w)
        yy = np.arange(y0, y1, dtype=np.float32)[:, None] / self.period  # (h, 1)
        if self.kind == "stripes":
            return (xx * np.cos(self.angle) + yy * np.sin(self.angle)) % 1.0 < self.duty
        if self.kind == "check":
            return (np.floor(xx) + np.floor(yy)) % 2 > 0.5
        if self.kind == "dots":
            return (xx % 1 - 0.5) ** 2 + (yy % 1 - 0.5) ** 2 < 0.06
        # noise: bilinear interpolation of a periodic 16 x 16 grid of random values, cell = period
        ix, iy = np.floor(xx).astype(np.int64), np.floor(yy).astype(np.int64)
        fx, fy = xx - ix, yy - iy
        g = self.grid
        v00, v01 = g[iy % 16, ix % 16], g[iy % 16, (ix + 1) % 16]
        v10, v11 = g[(iy + 1) % 16, ix % 16], g[(iy + 1) % 16, (ix + 1) % 16]
        return (v00 * (1 - fx) + v01 * fx) * (1 - fy) + (v10 * (1 - fx) + v11 * fx) * fy

    def crop(self, box) -> Image.Image:
        x0, y0, x1, y1 = (int(v) for v in box)
        c1, c2 = np.clip(self.c1 * self.gain, 0, 255), np.clip(self.c2 * self.gain, 0, 255)
        if self.kind == "solid":
            return Image.new("RGB", (x1 - x0, y1 - y0), tuple(int(v) for v in c1))
        t = self.pattern(x0, y0, x1, y1)
        if t.dtype == bool:
            img = np.where(t[..., None], c2.astype(np.uint8), c1.astype(np.uint8))  # (h, w, 3)
        else:
            img = (c1 + (c2 - c1) * t[..., None]).astype(np.uint8)
        return Image.fromarray(np.ascontiguousarray(img))


def texture(rng, c1, c2, kind: str, period: float) -> Texture:
    return Texture(rng, c1, c2, kind, period)


def random_texture(rng, unit: float, c1=None) -> Texture:
    c1 = rand_color(rng) if c1 is None else c1
    c2 = jitter(rng, c1, 60) if rng.random() < 0.5 else rand_color(rng)
    kind = str(rng.choice(Texture.KINDS, p=[0.3, 0.25, 0.15, 0.2, 0.1]))
    return Texture(rng, c1, c2, kind, max(2.0, unit * rng.uniform(0.02, 0.08)))


# ---------------------------------------------------------------------------------------------
# drawing


def capsule(p0, p1, r0: float, r1: float, k: int = 6) -> list[tuple[float, float]]:
    """Polygon of a tapered capsule (a limb) from p0 (radius r0) to p1 (radius r1)."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    d = p1 - p0
    n = np.hypot(d[0], d[1])
    d = d / n if n > 1e-6 else np.array([1.0, 0.0])
    frame = np.array([d, [-d[1], d[0]]])  # (2, 2): along, across
    c1, c0 = _half_circle(k)
    pts = np.concatenate([p1 + r1 * c1 @ frame, p0 + r0 * c0 @ frame])
    return list(map(tuple, pts.tolist()))


_HALF, _CIRCLE = {}, {}


def _half_circle(k: int):
    """Unit half circles (k points each) for the two capsule ends, in (along, across) coordinates."""
    if k not in _HALF:
        t1 = np.linspace(-np.pi / 2, np.pi / 2, k)
        t0 = t1 + np.pi
        _HALF[k] = (np.stack([np.cos(t1), np.sin(t1)], 1), np.stack([np.cos(t0), np.sin(t0)], 1))
    return _HALF[k]


def ellipse(c, rx: float, ry: float, angle: float = 0.0, k: int = 14) -> list[tuple[float, float]]:
    """Polygon of an ellipse centred at c, semi-axes rx / ry, rotated by ``angle`` radians."""
    if k not in _CIRCLE:
        t = np.linspace(0, 2 * np.pi, k, endpoint=False)
        _CIRCLE[k] = (np.cos(t), np.sin(t))
    x, y = rx * _CIRCLE[k][0], ry * _CIRCLE[k][1]
    ca, sa = np.cos(angle), np.sin(angle)
    pts = np.stack([c[0] + ca * x - sa * y, c[1] + sa * x + ca * y], 1)
    return list(map(tuple, pts.tolist()))


def hull(points) -> list[tuple[float, float]]:
    """Convex hull (monotone chain) of 2D points."""
    pts = sorted({(float(x), float(y)) for x, y in points})
    if len(pts) < 3:
        return pts

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lo, up = [], []
    for p in pts:
        while len(lo) >= 2 and cross(lo[-2], lo[-1], p) <= 0:
            lo.pop()
        lo.append(p)
    for p in reversed(pts):
        while len(up) >= 2 and cross(up[-2], up[-1], p) <= 0:
            up.pop()
        up.append(p)
    return lo[:-1] + up[:-1]


class Canvas:
    """An RGB image plus its part-id map, drawn in lock step."""

    def __init__(self, img: Image.Image):
        self.img = img
        self.ids = Image.new("L", img.size, BACKGROUND_ID)
        self.draw = ImageDraw.Draw(self.img)
        self.idraw = ImageDraw.Draw(self.ids)

    def fill(self, poly, fill, pid: int | None = None, outline=None, width: int = 1) -> None:
        """Fill a polygon with a colour or a texture image; write ``pid`` into the id map."""
        if len(poly) < 3:
            return
        if isinstance(fill, Texture):
            w, h = self.img.size
            xs, ys = [p[0] for p in poly], [p[1] for p in poly]
            x0, y0 = max(0, int(min(xs)) - 1), max(0, int(min(ys)) - 1)
            x1, y1 = min(w, int(max(xs)) + 2), min(h, int(max(ys)) + 2)
            if x1 <= x0 or y1 <= y0:
                return
            mask = Image.new("L", (x1 - x0, y1 - y0), 0)
            ImageDraw.Draw(mask).polygon([(x - x0, y - y0) for x, y in poly], fill=255)
            self.img.paste(fill.crop((x0, y0, x1, y1)), (x0, y0), mask)
        else:
            self.draw.polygon(poly, fill=fill)
        if outline is not None:
            self.draw.line(list(poly) + [poly[0]], fill=outline, width=width)
        if pid is not None:
            self.idraw.polygon(poly, fill=pid)

    def line(self, p0, p1, color, width: int = 1) -> None:
        """A decoration (crease, seam, band): colour only, the id map is unchanged."""
        self.draw.line([tuple(map(float, p0)), tuple(map(float, p1))], fill=color, width=max(1, int(width)))


# ---------------------------------------------------------------------------------------------
# scene elements


def background(rng, hw) -> Image.Image:
    """Clutter: a gradient, a faint texture, random shapes (some skin- or cloth-coloured) and long
    straight 'furniture' edges (tables, door frames, floor lines)."""
    h, w = hw
    c1, c2 = np.array(rand_color(rng), np.float32), np.array(rand_color(rng), np.float32)
    t = np.linspace(0, 1, h if rng.random() < 0.7 else w, dtype=np.float32)
    t = t[:, None, None] if t.size == h else t[None, :, None]
    base = np.broadcast_to(c1 * (1 - t) + c2 * t, (h, w, 3)).copy()
    if rng.random() < 0.6:
        tex = np.asarray(random_texture(rng, max(h, w)).crop((0, 0, w, h)), np.float32)
        a = rng.uniform(0.1, 0.5)
        base = base * (1 - a) + tex * a
    cv = Canvas(Image.fromarray(base.clip(0, 255).astype(np.uint8)))
    unit = float(max(h, w))
    for _ in range(int(rng.integers(4, 13))):
        kind = rng.choice(["furniture", "ellipse", "polygon", "line", "skin"], p=[0.3, 0.2, 0.2, 0.2, 0.1])
        cx, cy = rng.uniform(-0.1, 1.1) * w, rng.uniform(-0.1, 1.1) * h
        s = rng.uniform(0.05, 0.5) * unit
        fill = random_texture(rng, unit) if rng.random() < 0.5 else jitter(rng, rand_color(rng), 5)
        out = shade(rand_color(rng), 0.5) if rng.random() < 0.5 else None
        if kind == "furniture":
            bw, bh = s * rng.uniform(0.3, 2.0), s * rng.uniform(0.3, 2.0)
            cv.fill([(cx, cy), (cx + bw, cy), (cx + bw, cy + bh), (cx, cy + bh)], fill, outline=out, width=2)
        elif kind == "ellipse":
            cv.fill(ellipse((cx, cy), s / 2, s * rng.uniform(0.2, 0.6), rng.uniform(0, np.pi)), fill, outline=out)
        elif kind == "polygon":
            n = int(rng.integers(3, 7))
            a = np.sort(rng.uniform(0, 2 * np.pi, n))
            r = s * rng.uniform(0.3, 0.6, n)
            cv.fill([(cx + ri * np.cos(ai), cy + ri * np.sin(ai)) for ai, ri in zip(a, r)], fill, outline=out)
        elif kind == "line":
            a = rng.choice([0, np.pi / 2]) + rng.normal(0, 0.1)
            d = np.array([np.cos(a), np.sin(a)]) * unit * 1.5
            cv.line((cx - d[0], cy - d[1]), (cx + d[0], cy + d[1]), shade(rand_color(rng), 0.7),
                    width=max(1, int(unit * rng.uniform(0.004, 0.02))))
        else:  # skin-coloured blob: colour alone must not reveal the person
            col = jitter(rng, SKIN[int(rng.integers(len(SKIN)))], 10)
            cv.fill(capsule((cx, cy), (cx + s * rng.normal(0, 0.4), cy + s * rng.normal(0, 0.4)),
                            s * 0.08, s * 0.1), col)
    return cv.img


def occluder(cv: Canvas, rng, center, size: float) -> None:
    """A random object (box, bag, ball, pole, sign) in front of whoever is at ``center``."""
    cx, cy = center
    kind = rng.choice(["box", "ball", "pole", "polygon"], p=[0.4, 0.2, 0.2, 0.2])
    fill = random_texture(rng, size * 4) if rng.random() < 0.6 else jitter(rng, rand_color(rng), 5)
    out = shade(rand_color(rng), 0.4)
    if kind == "box":
        bw, bh = size * rng.uniform(0.5, 1.4), size * rng.uniform(0.5, 1.4)
        poly = [(cx - bw / 2, cy - bh / 2), (cx + bw / 2, cy - bh / 2), (cx + bw / 2, cy + bh / 2), (cx - bw / 2, cy + bh / 2)]
        if rng.random() < 0.5:  # tilt it
            a = rng.normal(0, 0.3)
            c, s = np.cos(a), np.sin(a)
            poly = [(cx + c * (x - cx) - s * (y - cy), cy + s * (x - cx) + c * (y - cy)) for x, y in poly]
    elif kind == "ball":
        poly = ellipse((cx, cy), size / 2, size / 2 * rng.uniform(0.7, 1.0), rng.uniform(0, np.pi))
    elif kind == "pole":
        a = rng.uniform(0, np.pi)
        d = np.array([np.cos(a), np.sin(a)]) * size * 1.5
        poly = capsule((cx - d[0], cy - d[1]), (cx + d[0], cy + d[1]), size * 0.12, size * 0.12)
    else:
        n = int(rng.integers(3, 7))
        a = np.sort(rng.uniform(0, 2 * np.pi, n))
        r = size * rng.uniform(0.3, 0.7, n)
        poly = [(cx + ri * np.cos(ai), cy + ri * np.sin(ai)) for ai, ri in zip(a, r)]
    cv.fill(poly, fill, OCCLUDER_ID, outline=out)


# ---------------------------------------------------------------------------------------------
# people


def sample_look(rng, px: float) -> dict:
    """Clothing, skin and hair of one person. Texture pattern periods scale
    with the person's size ``px`` (pixels per height)."""
    skin = jitter(rng, SKIN[int(rng.integers(len(SKIN)))], 8)
    shirt_c = rand_color(rng)
    pants_c = rand_color(rng, val=(0.1, 0.8))
    shirt = random_texture(rng, px, shirt_c)
    pants = random_texture(rng, px, pants_c)
    look = dict(
        skin=skin, skin_dark=shade(skin, 0.72),
        hair=jitter(rng, HAIR[int(rng.integers(len(HAIR)))], 10),
        hair_style=str(rng.choice(["short", "long", "bald"], p=[0.6, 0.32, 0.08])),
        shirt=shirt, shirt_dark=shirt.darker(0.75), shirt_c=shirt_c,
        pants=pants, pants_dark=pants.darker(0.75), pants_c=pants_c,
        long_sleeves=bool(rng.random() < 0.5), long_pants=bool(rng.random() < 0.75),
        cuff=shade(shirt_c, 0.6) if rng.random() < 0.5 else rand_color(rng),
        shoe=rand_color(rng, val=(0.05, 0.5)) if rng.random() < 0.7 else rand_color(rng),
        sock=(235, 235, 235) if rng.random() < 0.5 else rand_color(rng),
        glove=rand_color(rng) if rng.random() < 0.08 else None,
        bracelet=rand_color(rng) if rng.random() < 0.35 else None,
        belt=rand_color(rng, val=(0.05, 0.6)) if rng.random() < 0.5 else None,
        outline=rng.random() < 0.7,
    )
    return look


def paint_person(cv: Canvas, fig: Figure, pr: Projection, look: dict, pid_base: int | None) -> None:
    """Paint one person far-to-near. Part k gets id ``pid_base + k``; ``pid_base=None`` paints a
    distractor (every part gets DISTRACTOR_ID)."""
    px = pr.px
    rad = {k: max(1.0, v * px) for k, v in fig.radius.items()}
    lw = max(1, int(round(px * 0.006)))
    P = pr.__getitem__
    D = lambda *names: float(np.mean([pr.depth[IDX[n]] for n in names]))  # noqa: E731
    pid = (lambda part: pid_base + PART[part]) if pid_base is not None else (lambda part: DISTRACTOR_ID)
    dark = (lambda c: shade(c, 0.55)) if look["outline"] else (lambda c: None)
    groups = []  # (depth, order, fn)

    def torso():
        pts = [P(n) for n in ("ls_f", "ls_b", "rs_f", "rs_b", "lw_f", "lw_b", "rw_f", "rw_b")]
        cv.fill(hull(pts), look["shirt"], pid("torso"), dark(look["shirt_c"]), lw)
        # collar: a small skin/shirt-edge arc at the neck base
        cv.fill(ellipse(P("neck_base"), rad["neck"] * 1.2, rad["neck"] * 0.6,
                        np.arctan2(*(P("left_shoulder") - P("right_shoulder"))[::-1])),
                shade(look["shirt_c"], 0.6), pid("torso"))

    def pelvis():
        pts = [P(n) for n in ("lw_f", "lw_b", "rw_f", "rw_b", "lh_f", "lh_b", "rh_f", "rh_b")]
        cv.fill(hull(pts), look["pants"], pid("pelvis"), dark(look["pants_c"]), lw)
        if look["belt"] is not None:
            cv.line(P("left_waist"), P("right_waist"), look["belt"], rad["neck"] * 0.5)

    def neck():
        cv.fill(capsule(P("neck_base"), P("neck_top"), rad["neck"], rad["neck"]), look["skin"], pid("neck"))

    def head():
        r, c = rad["head"], P("head")
        hv = lambda x, y, z: pr.head2d @ np.array([x, y, z]) * r  # noqa: E731  head-frame offset (radii) -> px
        up = hv(0, 1, 0)
        ax = np.arctan2(up[1], up[0]) + np.pi / 2  # ellipse angle that puts ry along the head's up axis
        facing = pr.face_facing["nose"]
        hair_c = c + hv(0, 0.35, -0.5)  # hair sits on the top and back of the skull
        hair = ellipse(hair_c, r * 1.02, r * 1.04, ax)
        has_hair = look["hair_style"] != "bald"
        if look["hair_style"] == "long":
            cv.fill(capsule(hair_c, P("neck_base") + (hair_c - c) * 0.6, r * 0.9, r * 0.8), look["hair"], pid("head"))
        if has_hair and facing > 0:  # face towards the camera: the hair is behind the face
            cv.fill(hair, look["hair"], pid("head"))
        cv.fill(ellipse(c, r * 0.9, r, ax), look["skin"], pid("head"), dark(look["skin"]), lw)
        for e in ("left_ear", "right_ear"):  # visible slightly past profile, also from the back
            if pr.face_facing[e] > FACE_MIN[e]:
                cv.fill(ellipse(P(e), r * 0.22, r * 0.34, ax), look["skin"], pid("head"), look["skin_dark"])
                cv.fill(ellipse(P(e), r * 0.09, r * 0.16, ax), look["skin_dark"], pid("head"))
        if has_hair and facing <= 0:  # seen from behind: the hair covers the head
            cv.fill(hair, look["hair"], pid("head"))
        if has_hair and facing > 0:  # fringe
            cv.fill(ellipse(c + hv(0, 0.75, 0.2), r * 0.8, r * 0.35, ax), look["hair"], pid("head"))
        for e in ("left_eye", "right_eye"):  # white, pupil, brow
            f = pr.face_facing[e]
            if f > FACE_MIN[e]:
                p = P(e)
                cv.fill(ellipse(p, r * 0.2 * max(f, 0.4), r * 0.13, ax), (240, 240, 235), pid("head"))
                cv.fill(ellipse(p, r * 0.1, r * 0.1), (25, 20, 20), pid("head"))
                brow, side = hv(0, 0.22, 0), hv(0.18, 0, 0)
                cv.line(p + brow - side, p + brow + side, shade(look["hair"], 0.8), max(1, r * 0.08))
        if facing > FACE_MIN["nose"]:  # a small wedge that sticks out of the outline in profile
            n, out = P("nose"), hv(0, -0.1, 1.0) * 0.35
            cv.fill([tuple(n + up * 0.35), tuple(n + out - up * 0.05), tuple(n - up * 0.12)], look["skin_dark"],
                    pid("head"))
        if pr.face_facing["mouth"] > FACE_MIN["mouth"]:
            m, side = P("mouth"), hv(0.25, 0, 0)
            cv.line(m - side, m + side, (120, 40, 40), max(1, r * 0.08))

    def upper_arm(s):
        sh, el = P(f"{s}_shoulder"), P(f"{s}_elbow")
        far = pr.side_facing[s] < -0.3
        tex, texd = look["shirt"], look["shirt_dark"]
        r0, r1 = rad["upper_arm"], rad["upper_arm"] * 0.85
        if look["long_sleeves"]:
            cv.fill(capsule(sh, el, r0, r1), texd if far else tex, pid(f"{s}_upper_arm"), dark(look["shirt_c"]), lw)
        else:
            cv.fill(capsule(sh, el, r0 * 0.85, r1 * 0.9), shade(look["skin"], 0.9 if far else 1.0),
                    pid(f"{s}_upper_arm"), dark(look["skin"]), lw)
            end = sh + 0.5 * (el - sh)
            cv.fill(capsule(sh, end, r0 * 1.05, r0 * 1.0), texd if far else tex, pid(f"{s}_upper_arm"),
                    dark(look["shirt_c"]), lw)
            _band(cv, sh, el, 0.5, r0, shade(look["shirt_c"], 0.5), lw + 1)  # sleeve end

    def forearm(s):
        el, wr = P(f"{s}_elbow"), P(f"{s}_wrist")
        far = pr.side_facing[s] < -0.3
        r0, r1 = rad["forearm"] * 1.1, rad["forearm"] * 0.85
        if look["long_sleeves"]:
            cv.fill(capsule(el, wr, r0, r1), look["shirt_dark"] if far else look["shirt"], pid(f"{s}_forearm"),
                    dark(look["shirt_c"]), lw)
            cuff0 = el + 0.8 * (wr - el)
            cv.fill(capsule(cuff0, wr, r1 * 1.15, r1 * 1.15), look["cuff"], pid(f"{s}_forearm"))
        else:
            cv.fill(capsule(el, wr, r0 * 0.9, r1 * 0.9), shade(look["skin"], 0.9 if far else 1.0), pid(f"{s}_forearm"),
                    dark(look["skin"]), lw)
            if look["bracelet"] is not None:
                _band(cv, el, wr, 0.9, r1, look["bracelet"], max(2, lw * 2))
        # elbow crease on the inner side of the bend
        b = pr.bend2d[f"{s}_elbow"]
        c = el + b * r0 * 0.3
        t = (wr - el) / (np.linalg.norm(wr - el) + 1e-6)
        nrm = np.array([-t[1], t[0]])
        cv.line(c - nrm * r0 * 0.6, c + nrm * r0 * 0.6, shade(look["shirt_c"] if look["long_sleeves"] else look["skin"], 0.5), lw)

    def hand(s):
        wr, ha = P(f"{s}_wrist"), P(f"{s}_hand")
        col = look["glove"] or look["skin"]
        r = rad["hand"]
        cv.fill(capsule(wr, ha, r * 0.8, r * 1.15), col, pid(f"{s}_hand"), shade(col, 0.6), lw)
        t = ha - wr
        nrm = np.array([-t[1], t[0]]) / (np.linalg.norm(t) + 1e-6)
        for k in (-0.5, 0.0, 0.5):  # finger gaps
            p = ha + nrm * r * k
            cv.line(p - t * 0.35, p + t * 0.1, shade(col, 0.7), 1)

    def thigh(s):
        hp, kn = P(f"{s}_hip"), P(f"{s}_knee")
        far = pr.side_facing[s] < -0.3
        r0, r1 = rad["thigh"], rad["thigh"] * 0.75
        cv.fill(capsule(hp, kn, r0, r1), look["pants_dark"] if far else look["pants"], pid(f"{s}_thigh"),
                dark(look["pants_c"]), lw)
        if not look["long_pants"]:  # shorts end above the knee: bare knee
            end = hp + 0.7 * (kn - hp)
            cv.fill(capsule(end, kn, r1 * 0.9, r1 * 0.85), look["skin"], pid(f"{s}_thigh"), dark(look["skin"]), lw)
            _band(cv, hp, kn, 0.7, r1 * 1.05, shade(look["pants_c"], 0.5), lw + 1)

    def shin(s):
        kn, an = P(f"{s}_knee"), P(f"{s}_ankle")
        far = pr.side_facing[s] < -0.3
        r0, r1 = rad["shin"] * 1.05, rad["shin"] * 0.75
        if look["long_pants"]:
            cv.fill(capsule(kn, an, r0, r1), look["pants_dark"] if far else look["pants"], pid(f"{s}_shin"),
                    dark(look["pants_c"]), lw)
            col = shade(look["pants_c"], 0.5)
        else:
            cv.fill(capsule(kn, an, r0 * 0.9, r1 * 0.85), look["skin"], pid(f"{s}_shin"), dark(look["skin"]), lw)
            col = look["skin_dark"]
            cv.fill(ellipse(kn, r0 * 0.45, r0 * 0.35), shade(look["skin"], 1.1), pid(f"{s}_shin"))  # kneecap
        b = pr.bend2d[f"{s}_knee"]  # crease at the back of the knee
        t = (an - kn) / (np.linalg.norm(an - kn) + 1e-6)
        nrm = np.array([-t[1], t[0]])
        c = kn + b * r0 * 0.3
        cv.line(c - nrm * r0 * 0.7, c + nrm * r0 * 0.7, col, lw)

    def foot(s):
        an, he, to = P(f"{s}_ankle"), P(f"{s}_heel"), P(f"{s}_toe")
        r = rad["foot"]
        cv.fill(capsule(he, to, r * 1.1, r * 0.95), look["shoe"], pid(f"{s}_foot"), shade(look["shoe"], 0.5), lw)
        cv.fill(ellipse(an, rad["shin"] * 0.85, rad["shin"] * 0.5,
                        np.arctan2(*(to - he)[::-1])), look["sock"], pid(f"{s}_foot"))  # shoe top / sock

    tors_d = D("ls_f", "ls_b", "rs_f", "rs_b", "left_waist", "right_waist")
    groups += [(tors_d, 0, torso), (tors_d - 0.005, 0, pelvis), (D("neck_base", "neck_top") - 0.01, 0, neck),
               (D("head"), 1, head)]
    bias = 0.02  # limbs at the torso's side are drawn over it
    for s in ("left", "right"):
        groups += [
            (D(f"{s}_shoulder", f"{s}_elbow") + bias, 2, lambda s=s: upper_arm(s)),
            (D(f"{s}_elbow", f"{s}_wrist") + bias + 0.001, 3, lambda s=s: forearm(s)),
            (D(f"{s}_wrist", f"{s}_hand") + bias + 0.002, 4, lambda s=s: hand(s)),
            (D(f"{s}_hip", f"{s}_knee") + bias, 2, lambda s=s: thigh(s)),
            (D(f"{s}_knee", f"{s}_ankle") + bias + 0.001, 3, lambda s=s: shin(s)),
            (D(f"{s}_ankle", f"{s}_toe") + bias + 0.002, 4, lambda s=s: foot(s)),
        ]
    for _, _, fn in sorted(groups, key=lambda g: (g[0], g[1])):
        fn()


def _band(cv: Canvas, p0, p1, t: float, r: float, color, width: int) -> None:
    """A band across the limb p0 -> p1 at fraction t (sleeve end, bracelet, hem)."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    d = p1 - p0
    d = d / (np.linalg.norm(d) + 1e-6)
    nrm = np.array([-d[1], d[0]])
    c = p0 + t * (p1 - p0)
    cv.line(c - nrm * r, c + nrm * r, color, width)
