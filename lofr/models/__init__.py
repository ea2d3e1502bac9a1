"""LOFR's model, one file per stage of the paper's Fig. 2.

backbone.py (CNN) -> cam.py (Eq. 1-2) -> position.py / spe.py (Eq. 3-4) -> encoder.py (Eq. 5-9)
-> reppg.py (Eq. 10) -> decoder.py (response maps, part features) -> losses.py (Eq. 11-15);
lofr.py puts them together (LOFR, LOFRConfig, Baseline).
"""

from lofr.models.backbone import Backbone, SmallCNN
from lofr.models.cam import CAMHead
from lofr.models.decoder import PoseDecoder
from lofr.models.encoder import MultiHeadAttention, MultiScaleEncoder, TransformerEncoder
from lofr.models.lofr import LOFR, Baseline, LOFRConfig, PlainCAM, decode_response_maps
from lofr.models.losses import LOFRCriterion, LossWeights
from lofr.models.position import LearnedPositionEncoding, SinePositionEncoding
from lofr.models.reppg import RePPG
from lofr.models.spe import SPE

__all__ = [
    "Backbone", "SmallCNN", "CAMHead", "SinePositionEncoding", "LearnedPositionEncoding", "SPE",
    "MultiHeadAttention", "TransformerEncoder", "MultiScaleEncoder", "RePPG", "PoseDecoder",
    "LOFRCriterion", "LossWeights", "LOFR", "LOFRConfig", "Baseline", "PlainCAM", "decode_response_maps",
]
