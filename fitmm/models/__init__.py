"""Model registry: config name -> class. One model per file."""

from fitmm.models.base import Recommender
from fitmm.models.bpr import BPRMF
from fitmm.models.ease import EASE
from fitmm.models.fitmm import FITMM
from fitmm.models.freedom import FREEDOM
from fitmm.models.lightgcn import LightGCN
from fitmm.models.smore import SMORE
from fitmm.models.ssr import SSR
from fitmm.models.vbpr import VBPR

MODELS: dict[str, type[Recommender]] = {
    "bpr": BPRMF,
    "lightgcn": LightGCN,
    "ease": EASE,
    "fitmm": FITMM,
    "ssr": SSR,
    "vbpr": VBPR,
    "freedom": FREEDOM,
    "smore": SMORE,
}
