"""ProFD losses: pure terms (:mod:`.functional`), the weighted :class:`ProFDCriterion` and its builder."""
from . import functional
from .criterion import LOSS_KEYS, ProFDCriterion, build_profd_criterion

__all__ = ["functional", "ProFDCriterion", "LOSS_KEYS", "build_profd_criterion"]
