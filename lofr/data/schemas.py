"""Keypoint schemas: COCO-17, MPII-16 and CrowdPose-14.

A schema is everything that depends on *which* keypoints a dataset annotates:
their names, the kinematic graph (the edges RePPG's SemGCN propagates over,
paper Sec. 3.4), the left/right flip pairs used by flip augmentation and flip
testing, and the per-keypoint OKS falloff constants (sigmas) used by OKS AP.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["KeypointSchema", "COCO17", "MPII16", "CROWDPOSE14", "SCHEMAS", "get_schema"]


@dataclass(frozen=True)
class KeypointSchema:
    name: str
    keypoints: tuple[str, ...]
    edges: tuple[tuple[int, int], ...]  # undirected kinematic edges, 0-based
    flip_pairs: tuple[tuple[int, int], ...]  # (left, right) index pairs
    sigmas: tuple[float, ...]  # OKS falloff per keypoint
    upper_body: tuple[int, ...]  # for half-body augmentation
    groups: dict[str, tuple[int, ...]] = field(default_factory=dict)  # for per-group reports

    def __post_init__(self) -> None:
        c = len(self.keypoints)
        if len(self.sigmas) != c:
            raise ValueError(f"schema {self.name}: {len(self.sigmas)} sigmas for {c} keypoints")
        for a, b in self.edges + self.flip_pairs:
            if not (0 <= a < c and 0 <= b < c) or a == b:
                raise ValueError(f"schema {self.name}: bad pair ({a}, {b}) for {c} keypoints")

    @property
    def num_keypoints(self) -> int:
        return len(self.keypoints)

    @property
    def lower_body(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.num_keypoints) if i not in self.upper_body)

    @property
    def flip_index(self) -> np.ndarray:
        """Permutation that maps each keypoint to its mirror image (an involution)."""
        perm = np.arange(self.num_keypoints)
        for a, b in self.flip_pairs:
            perm[a], perm[b] = b, a
        return perm

    def adjacency(self, self_loops: bool = True) -> np.ndarray:
        """Dense (C, C) 0/1 adjacency A of the kinematic graph (paper Sec. 3.4: a_ij = 1 for
        adjacent joints or i = j)."""
        a = np.zeros((self.num_keypoints, self.num_keypoints), dtype=np.float32)
        for i, j in self.edges:
            a[i, j] = a[j, i] = 1.0
        if self_loops:
            np.fill_diagonal(a, 1.0)
        return a

    def edge_index(self, self_loops: bool = True) -> np.ndarray:
        """(2, E) directed edge list (both directions, + self loops), torch-geometric style."""
        src, dst = np.nonzero(self.adjacency(self_loops))
        return np.stack([src, dst]).astype(np.int64)

    @property
    def skeleton_coco(self) -> list[list[int]]:
        """1-based skeleton as written in a COCO category entry."""
        return [[i + 1, j + 1] for i, j in self.edges]


COCO17 = KeypointSchema(
    name="coco",
    keypoints=(
        "nose", "left_eye", "right_eye", "left_ear", "right_ear",
        "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
        "left_wrist", "right_wrist", "left_hip", "right_hip",
        "left_knee", "right_knee", "left_ankle", "right_ankle",
    ),
    # The COCO person skeleton (as in person_keypoints_*.json), 0-based.
    edges=(
        (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7),
        (6, 8), (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6),
    ),
    flip_pairs=((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)),
    # COCO's published OKS constants (cocoapi, keypoint evaluation).
    sigmas=(.026, .025, .025, .035, .035, .079, .079, .072, .072, .062, .062,
            .107, .107, .087, .087, .089, .089),
    upper_body=tuple(range(11)),
    groups={"face": (0, 1, 2, 3, 4), "arms": (5, 6, 7, 8, 9, 10), "legs": (11, 12, 13, 14, 15, 16)},
)

MPII16 = KeypointSchema(
    name="mpii",
    keypoints=(
        "right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle",
        "pelvis", "thorax", "upper_neck", "head_top",
        "right_wrist", "right_elbow", "right_shoulder", "left_shoulder", "left_elbow", "left_wrist",
    ),
    edges=(
        (0, 1), (1, 2), (2, 6), (6, 3), (3, 4), (4, 5), (6, 7), (7, 8), (8, 9),
        (10, 11), (11, 12), (12, 7), (7, 13), (13, 14), (14, 15),
    ),
    flip_pairs=((5, 0), (4, 1), (3, 2), (15, 10), (14, 11), (13, 12)),
    # MPII defines no OKS; these are the constants mmpose uses for MPII (only used if a user asks
    # for OKS on MPII; the MPII metric is PCKh).
    sigmas=(.089, .083, .107, .107, .083, .089, .026, .026, .026, .026,
            .062, .072, .179, .179, .072, .062),
    upper_body=(7, 8, 9, 10, 11, 12, 13, 14, 15),
    groups={"head": (8, 9), "arms": (10, 11, 12, 13, 14, 15), "legs": (0, 1, 2, 3, 4, 5), "torso": (6, 7)},
)

CROWDPOSE14 = KeypointSchema(
    name="crowdpose",
    keypoints=(
        "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
        "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
        "top_head", "neck",
    ),
    edges=(
        (12, 13), (13, 0), (13, 1), (0, 2), (2, 4), (1, 3), (3, 5),
        (0, 6), (1, 7), (6, 7), (6, 8), (8, 10), (7, 9), (9, 11),
    ),
    flip_pairs=((0, 1), (2, 3), (4, 5), (6, 7), (8, 9), (10, 11)),
    # CrowdPose's constants (xtcocotools, crowdpose evaluation).
    sigmas=(.079, .079, .072, .072, .062, .062, .107, .107, .087, .087, .089, .089, .079, .079),
    upper_body=(0, 1, 2, 3, 4, 5, 12, 13),
    groups={"head": (12, 13), "arms": (0, 1, 2, 3, 4, 5), "legs": (6, 7, 8, 9, 10, 11)},
)

SCHEMAS: dict[str, KeypointSchema] = {s.name: s for s in (COCO17, MPII16, CROWDPOSE14)}


def get_schema(name: str | KeypointSchema) -> KeypointSchema:
    if isinstance(name, KeypointSchema):
        return name
    key = str(name).lower().replace("-", "").replace("_", "")
    aliases = {"coco": "coco", "coco17": "coco", "mpii": "mpii", "mpii16": "mpii",
               "crowdpose": "crowdpose", "crowdpose14": "crowdpose"}
    if key not in aliases:
        raise ValueError(f"unknown keypoint schema {name!r}; expected one of {sorted(SCHEMAS)}")
    return SCHEMAS[aliases[key]]
