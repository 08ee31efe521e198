"""ProFD losses: pure terms (:mod:`.functional`), their targets (:mod:`.targets`), the weighted
:class:`ProFDCriterion` and its builder. (The PCL terms belong to ``modeling.memory.MemoryBanks``.)"""
from . import functional
from .criterion import CRITERION_KEYS, LOSS_KEYS, ProFDCriterion, ProFDTargets, build_profd_criterion

__all__ = ["functional", "ProFDCriterion", "ProFDTargets", "LOSS_KEYS", "CRITERION_KEYS",
           "build_profd_criterion"]
