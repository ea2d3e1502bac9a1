"""lofr: Location-Free Human Pose Estimation (Xu et al., CVPR 2022), stage by stage."""

__version__ = "0.1.0"
