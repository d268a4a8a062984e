"""Model registry: config name -> class. One model per file."""

from fitmm.models.base import Recommender
from fitmm.models.bpr import BPRMF
from fitmm.models.ease import EASE
from fitmm.models.lightgcn import LightGCN

MODELS: dict[str, type[Recommender]] = {
    "bpr": BPRMF,
    "lightgcn": LightGCN,
    "ease": EASE,
}
