"""SynthPose kinematics: a 2.5D articulated human figure with joint limits.

Body frame (units of standing height, about 1.0 from sole to crown): X points to the person's
LEFT, Y up, Z forward (the way the person faces). A figure is posed in this frame, turned about
the vertical axis by ``yaw`` and projected orthographically onto the image:

* yaw = 0: front view, the person faces the camera, so their left (+X) is on the image's RIGHT;
* yaw = 180: back view, their left is on the image's left;
* yaw = +90: profile facing the image's right, the left side is the far side.

``depth`` is the coordinate pointing towards the camera (larger = nearer); the painter draws parts
far to near. After projection the figure is tilted in the image plane, scaled to pixels and moved.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["POINTS", "Figure", "Projection", "sample_figure", "sample_view", "project", "rot_x", "rot_y", "rot_z"]

# Named 3D points of a figure: the 17 COCO keypoints first (same order as COCO17.keypoints), then
# the extra points the painter needs.
POINTS = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
    "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
    "pelvis", "neck_base", "neck_top", "head", "head_top", "mouth",
    "left_hand", "right_hand", "left_toe", "right_toe", "left_heel", "right_heel",
    "left_waist", "right_waist",
    # torso / pelvis box corners (front and back): shoulder line, waist, hips
    "ls_f", "ls_b", "rs_f", "rs_b", "lw_f", "lw_b", "rw_f", "rw_b", "lh_f", "lh_b", "rh_f", "rh_b",
)
IDX = {n: i for i, n in enumerate(POINTS)}

# Face features in the head frame, in head radii: position and outward normal.
_FACE = {
    "nose": ((0.0, -0.15, 1.02), (0.0, -0.1, 1.0)),
    "left_eye": ((0.36, 0.18, 0.86), (0.3, 0.15, 0.94)),
    "right_eye": ((-0.36, 0.18, 0.86), (-0.3, 0.15, 0.94)),
    "left_ear": ((1.0, 0.0, -0.05), (1.0, 0.0, -0.1)),
    "right_ear": ((-1.0, 0.0, -0.05), (-1.0, 0.0, -0.1)),
    "mouth": ((0.0, -0.52, 0.82), (0.0, -0.5, 0.85)),
}


def rot_x(deg: float) -> np.ndarray:
    """Rotation about X; positive tilts +Y towards +Z (leaning forward)."""
    c, s = np.cos(np.deg2rad(deg)), np.sin(np.deg2rad(deg))
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def rot_y(deg: float) -> np.ndarray:
    """Rotation about the vertical axis Y; positive turns +Z (facing) towards +X."""
    c, s = np.cos(np.deg2rad(deg)), np.sin(np.deg2rad(deg))
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def rot_z(deg: float) -> np.ndarray:
    """Rotation about Z; positive swings a hanging (-Y) limb towards +X (the person's left)."""
    c, s = np.cos(np.deg2rad(deg)), np.sin(np.deg2rad(deg))
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _rotate_about(v: np.ndarray, axis: np.ndarray, deg: float) -> np.ndarray:
    """Rodrigues rotation of v about the unit vector axis."""
    a = np.deg2rad(deg)
    return v * np.cos(a) + np.cross(axis, v) * np.sin(a) + axis * (axis @ v) * (1 - np.cos(a))


@dataclass
class Figure:
    pts: np.ndarray  # (P, 3) named POINTS in the body frame
    head_rot: np.ndarray  # (3, 3) head frame -> body frame
    face_normals: dict  # name -> (3,) unit normal in the body frame
    radius: dict  # part -> half width (height units)
    bend: dict  # 'left_elbow' ... -> (3,) unit bend direction of the joint (body frame)


@dataclass
class Projection:
    xy: np.ndarray  # (P, 2) pixels
    depth: np.ndarray  # (P,) towards the camera, height units
    px: float  # pixels per height unit
    yaw: float
    tilt: float
    face_facing: dict  # name -> camera-facing component of the feature's normal
    side_facing: dict  # 'left'/'right' -> camera-facing component of the body side's normal
    bend2d: dict  # joint -> (2,) unit image direction of the joint's bend
    head2d: np.ndarray  # (2, 3) head-frame direction -> image direction (before scaling by px)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.xy[IDX[name]]


# ---------------------------------------------------------------------------------------------
# sampling


def _clip(v, lo, hi) -> float:
    return float(min(hi, max(lo, v)))


def _limb(rng, lo, hi, mode=None):
    return float(rng.uniform(lo, hi)) if mode is None else _clip(rng.normal(*mode), lo, hi)


def sample_pose(rng: np.random.Generator) -> dict:
    """Joint angles (degrees) within joint limits, from a mixture of everyday pose families.

    Limits: shoulder flexion [-50, 175], abduction [-10, 110], elbow [0, 150]; hip flexion
    [-30, 110], abduction [-10, 45], knee [0, 145]; spine lean [-15, 45], side bend [-20, 20].
    """
    family = rng.choice(["stand", "walk", "reach", "action", "crouch"], p=[0.3, 0.25, 0.15, 0.2, 0.1])
    p = {"family": str(family)}
    p["lean"] = _limb(rng, -15, 45, (5, 8))
    p["side_bend"] = _limb(rng, -20, 20, (0, 5))
    p["twist"] = _limb(rng, -35, 35, (0, 10))
    p["head_yaw"] = _limb(rng, -60, 60, (0, 22))
    p["head_pitch"] = _limb(rng, -30, 35, (0, 10))
    swing = rng.uniform(15, 40) * rng.choice([-1, 1])
    for i, side in enumerate(("left", "right")):
        sgn = 1 if i == 0 else -1
        if family == "stand":
            arm = (_limb(rng, -50, 175, (5, 20)), _limb(rng, -10, 110, (12, 10)), _limb(rng, 0, 150, (20, 30)))
            leg = (_limb(rng, -30, 110, (0, 6)), _limb(rng, -10, 45, (5, 5)), _limb(rng, 0, 145, (3, 6)))
        elif family == "walk":
            arm = (_clip(sgn * swing + rng.normal(0, 8), -50, 175), _limb(rng, -10, 110, (8, 5)),
                   _limb(rng, 0, 150, (25, 15)))
            leg = (_clip(-sgn * swing + rng.normal(0, 6), -30, 110), _limb(rng, -10, 45, (3, 3)),
                   _limb(rng, 0, 145, (15, 15)))
        elif family == "reach":
            arm = (_limb(rng, -50, 175), _limb(rng, -10, 110), _limb(rng, 0, 150))
            leg = (_limb(rng, -30, 110, (5, 10)), _limb(rng, -10, 45, (8, 8)), _limb(rng, 0, 145, (8, 12)))
        elif family == "action":
            arm = (_limb(rng, -50, 175), _limb(rng, -10, 110), _limb(rng, 0, 150))
            leg = (_limb(rng, -30, 110), _limb(rng, -10, 45), _limb(rng, 0, 145))
        else:  # crouch / sit
            arm = (_limb(rng, -20, 120), _limb(rng, -10, 60), _limb(rng, 0, 150))
            leg = (_limb(rng, 50, 110), _limb(rng, -10, 45), _limb(rng, 60, 145))
        p[f"{side}_arm"] = arm + (float(rng.normal(0, 30)),)  # + forearm twist about the humerus
        p[f"{side}_leg"] = leg
    return p


def sample_proportions(rng: np.random.Generator) -> dict:
    """Segment lengths / half widths in units of standing height, each jittered by about 8%."""
    j = lambda v: v * _clip(rng.normal(1, 0.08), 0.8, 1.2)  # noqa: E731
    breadth = float(rng.uniform(0.85, 1.25))
    head = j(0.064)
    return dict(
        shin=j(0.23), thigh=j(0.24), torso=j(0.29), neck=j(0.045), head=head,
        shoulder=j(0.105) * breadth, hip=j(0.075) * breadth, waist=j(0.085) * breadth,
        upper_arm=j(0.165), forearm=j(0.15), hand=j(0.058), foot=j(0.085), chest=j(0.055) * breadth,
        r_upper_arm=j(0.03) * breadth, r_forearm=j(0.024) * breadth, r_hand=j(0.022),
        r_thigh=j(0.048) * breadth, r_shin=j(0.034) * breadth, r_foot=j(0.022), r_neck=j(0.027),
    )


def sample_figure(rng: np.random.Generator) -> Figure:
    """Pose a random figure: proportions + joint angles -> named 3D points in the body frame."""
    b = sample_proportions(rng)
    p = sample_pose(rng)
    q = {"pelvis": np.zeros(3)}  # name -> (3,) point in the body frame
    down = np.array([0.0, -1.0, 0.0])
    r_up = rot_y(p["twist"]) @ rot_x(p["lean"]) @ rot_z(p["side_bend"])  # upper body frame
    q["neck_base"] = r_up @ np.array([0.0, b["torso"], 0.0])
    q["neck_top"] = r_up @ np.array([0.0, b["torso"] + b["neck"], 0.0])
    head_rot = r_up @ rot_y(p["head_yaw"]) @ rot_x(-p["head_pitch"])
    q["head"] = q["neck_top"] + head_rot @ np.array([0.0, 0.85 * b["head"], 0.15 * b["head"]])
    q["head_top"] = q["head"] + head_rot @ np.array([0.0, b["head"], 0.0])
    normals = {}
    for name, (pos, nrm) in _FACE.items():
        q[name] = q["head"] + head_rot @ (np.array(pos) * b["head"])
        n = head_rot @ np.array(nrm)
        normals[name] = n / np.linalg.norm(n)
    bend = {}
    for sgn, side in ((1, "left"), (-1, "right")):
        s0 = side[0]
        # trunk: shoulder line, waist and hips, each with a front (f) and back (b) corner
        q[f"{side}_shoulder"] = sh = r_up @ np.array([sgn * b["shoulder"], 0.96 * b["torso"], 0.0])
        q[f"{side}_waist"] = r_up @ np.array([sgn * b["waist"], 0.3 * b["torso"], 0.0])
        for fb, z in (("f", 1.0), ("b", -1.0)):
            q[f"{s0}s_{fb}"] = r_up @ np.array([sgn * 0.95 * b["shoulder"], b["torso"], z * b["chest"]])
            q[f"{s0}w_{fb}"] = r_up @ np.array([sgn * b["waist"], 0.3 * b["torso"], 0.9 * z * b["chest"]])
            q[f"{s0}h_{fb}"] = np.array([sgn * (b["hip"] + 0.6 * b["r_thigh"]), -0.03, 0.9 * z * b["chest"]])
        # arm: abduct, then flex forward; the elbow bends towards the (twisted) front
        flex, abd, elbow, tw = p[f"{side}_arm"]
        r_arm = r_up @ rot_x(-flex) @ rot_z(sgn * abd)
        u = r_arm @ down
        bv = _rotate_about(r_arm @ np.array([0.0, 0.0, 1.0]), u, tw)
        e = np.deg2rad(elbow)
        fore = np.cos(e) * u + np.sin(e) * bv
        q[f"{side}_elbow"] = sh + b["upper_arm"] * u
        q[f"{side}_wrist"] = q[f"{side}_elbow"] + b["forearm"] * fore
        hand = fore + 0.35 * float(rng.uniform(-1, 1)) * bv
        q[f"{side}_hand"] = q[f"{side}_wrist"] + b["hand"] * hand / np.linalg.norm(hand)
        bend[f"{side}_elbow"] = bv
        # leg: abduct, then flex forward; the knee bends backwards, the foot follows the shin
        q[f"{side}_hip"] = hip = np.array([sgn * b["hip"], 0.0, 0.0])
        hflex, habd, knee = p[f"{side}_leg"]
        r_leg = rot_x(-hflex) @ rot_z(sgn * habd)
        u = r_leg @ down
        bv = r_leg @ np.array([0.0, 0.0, -1.0])
        k = np.deg2rad(knee)
        shin = np.cos(k) * u + np.sin(k) * bv
        foot = np.sin(k) * u - np.cos(k) * bv + sgn * 0.25 * (r_leg @ np.array([1.0, 0.0, 0.0]))
        foot = foot / np.linalg.norm(foot)
        q[f"{side}_knee"] = hip + b["thigh"] * u
        q[f"{side}_ankle"] = ankle = q[f"{side}_knee"] + b["shin"] * shin
        q[f"{side}_heel"] = ankle + 0.3 * b["foot"] * -foot + 0.035 * shin
        q[f"{side}_toe"] = ankle + 0.8 * b["foot"] * foot + 0.035 * shin
        bend[f"{side}_knee"] = bv
    pts = np.stack([q[n] for n in POINTS])  # (P, 3)
    radius = {k[2:]: v for k, v in b.items() if k.startswith("r_")}
    radius.update(head=b["head"], chest=b["chest"])
    return Figure(pts, head_rot, normals, radius, bend)


def sample_view(rng: np.random.Generator) -> tuple[float, float]:
    """(yaw, tilt) in degrees: front 35%, back 25%, profile 25%, any 15%; in-plane tilt ~ N(0, 10)."""
    kind = rng.choice(4, p=[0.35, 0.25, 0.25, 0.15])
    if kind == 0:
        yaw = rng.normal(0, 22)
    elif kind == 1:
        yaw = 180 + rng.normal(0, 22)
    elif kind == 2:
        yaw = rng.choice([-90, 90]) + rng.normal(0, 15)
    else:
        yaw = rng.uniform(-180, 180)
    tilt = _clip(rng.normal(0, 10), -45, 45) if rng.random() < 0.9 else float(rng.uniform(-90, 90))
    return float((yaw + 180) % 360 - 180), tilt


def project(fig: Figure, yaw: float, tilt: float, px: float, origin=(0.0, 0.0)) -> Projection:
    """Turn by ``yaw`` about the vertical, project orthographically (image y down), rotate by ``tilt``
    degrees in the image plane (positive = counter-clockwise on screen), scale by ``px`` pixels per
    height unit and translate so that the pelvis lands on ``origin``."""
    r = rot_y(yaw)
    cam = fig.pts @ r.T  # (P, 3)
    uv = np.stack([cam[:, 0], -cam[:, 1]], axis=1)
    a = np.deg2rad(tilt)
    r2 = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])  # CCW on screen (y down)

    def to2d(v3: np.ndarray) -> np.ndarray:  # direction in the body frame -> image direction
        c = r @ v3
        return r2 @ np.array([c[0], -c[1]])

    xy = (uv - uv[IDX["pelvis"]]) @ r2.T * px + np.asarray(origin, dtype=np.float64)
    facing = {k: float((r @ n)[2]) for k, n in fig.face_normals.items()}
    side = {"left": float(r[2, 0]), "right": float(-r[2, 0])}
    bend2d = {}
    for k, v in fig.bend.items():
        d = to2d(v)
        n = np.linalg.norm(d)
        bend2d[k] = d / n if n > 1e-6 else np.zeros(2)
    head2d = r2 @ np.array([[1.0, 0, 0], [0, -1.0, 0]]) @ r @ fig.head_rot
    return Projection(xy, cam[:, 2], px, yaw, tilt, facing, side, bend2d, head2d)
