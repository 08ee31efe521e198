"""Prototype memory banks for general knowledge preservation (paper Sec. 4.3, Eq. 15-18).

Official code: ``ClusterMemoryAMP(temp=0.05, momentum=0.2, use_hard=True)`` (Cuixxx/ProFD
``losses/ClusterMemoryAMP.py``). Two banks: K_g on the BNNeck global feature (D) and K_p on the
BNNeck concatenated parts (K*D). The loss is CE(normalize(x) K^T / tau, y) with K a constant; the
update (``CM_Hard``) moves each identity's prototype towards its HARDEST sample of the batch (lowest
cosine to the prototype): K[y] <- m K[y] + (1 - m) z_hard, then renormalises.

Unlike the official plain tensors, prototypes are module buffers (with an ``initialized`` flag) so
checkpoints carry them. The engine runs the init pass and calls :meth:`PrototypeMemory.update` after
the loss (with features gathered across ranks under DDP).

Shape shorthand:
    N: batch size
    C: number of identities
    D: feature width of the bank (D for the global bank, K*D for the part bank)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..losses.functional import prototype_contrastive_loss

__all__ = ["PrototypeMemory", "MEMORY_UPDATE_MODES"]

MEMORY_UPDATE_MODES = ("hard", "mean")


class PrototypeMemory(nn.Module):
    """Per-identity unit-norm prototypes with a PCL loss and a momentum update.

    Args:
        num_classes: C.
        dim: feature width.
        temperature: tau of the PCL loss (``profd.loss.pcl_temperature``, official 0.05).
        momentum: m of the update (``profd.loss.pcl_momentum``, official 0.2).
        update: ``hard`` (official CM_Hard: the sample with the lowest cosine to its prototype) or
            ``mean`` (the batch mean per identity).

    Buffers:
        prototypes: (C, D) unit vectors; random until :meth:`initialize`.
        initialized: bool scalar, True after :meth:`initialize`.
    """

    def __init__(self, num_classes: int, dim: int, *, temperature: float, momentum: float,
                 update: str = "hard") -> None:
        super().__init__()
        if update not in MEMORY_UPDATE_MODES:
            raise ValueError(f"memory update '{update}' not in {MEMORY_UPDATE_MODES}")
        self.num_classes, self.dim = num_classes, dim
        self.temperature, self.momentum, self.update_mode = temperature, momentum, update
        self.register_buffer("prototypes", F.normalize(torch.randn(num_classes, dim), dim=1))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def initialize(self, features: Tensor, labels: Tensor, normalize_first: bool) -> None:
        """Set each prototype to the (normalised) class centroid of ``features``.

        Official: the global bank L2-normalises features, averages per class and renormalises
        (``normalize_first=True``); the part bank averages raw features, then normalises
        (``normalize_first=False``). Classes absent from ``features`` keep their random unit vector.

        Args:
            features: (M, D) features of the init pass (any number of samples).
            labels: (M,) identities in [0, C).
            normalize_first: L2-normalise each feature before averaging.
        """
        feats = features.float()
        feats = F.normalize(feats, dim=1) if normalize_first else feats  # (M, D)
        labels = labels.long().to(feats.device)
        sums = torch.zeros(self.num_classes, self.dim, device=feats.device).index_add_(0, labels, feats)
        counts = torch.bincount(labels, minlength=self.num_classes)  # (C,)
        present = counts > 0
        centroids = F.normalize(sums[present] / counts[present, None], dim=1)  # (C', D)
        self.prototypes[present.to(self.prototypes.device)] = centroids.to(self.prototypes)
        self.initialized.fill_(True)

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        """PCL loss (Eq. 16 / 18): CE(normalize(features) K^T / tau, labels), K treated as a constant.

        Args:
            features: (N, D) features.
            labels: (N,) identities.

        Returns:
            Scalar loss.
        """
        return prototype_contrastive_loss(features, self.prototypes, labels, self.temperature)

    @torch.no_grad()
    def update(self, features: Tensor, labels: Tensor) -> None:
        """Momentum update of the prototypes of the identities in the batch (Eq. 15 / 17).

        For each identity y in ``labels``: K[y] <- normalize(m K[y] + (1 - m) z), with z its hardest
        sample (``hard``: lowest cosine to K[y], the lowest batch index among equal minima) or its mean
        (``mean``) of the L2-normalised features. All identities are updated at once (no Python loop).

        Args:
            features: (N, D) features (detached or not; gathered across ranks by the caller under DDP).
            labels: (N,) identities.
        """
        feats = F.normalize(features.detach().float(), dim=1).to(self.prototypes.device)  # (N, D)
        labels = labels.long().to(feats.device)
        present = torch.unique(labels)  # (C',) sorted identities of the batch
        if self.update_mode == "hard":
            hardest = _hardest_per_label(feats, self.prototypes[labels], labels, self.num_classes)  # (C,)
            targets = feats[hardest[present]]  # (C', D)
        else:
            sums = torch.zeros(self.num_classes, self.dim, device=feats.device).index_add_(0, labels, feats)
            counts = torch.bincount(labels, minlength=self.num_classes)  # (C,)
            targets = sums[present] / counts[present, None]  # (C', D)
        protos = self.momentum * self.prototypes[present] + (1.0 - self.momentum) * targets  # (C', D)
        self.prototypes[present] = F.normalize(protos, dim=1)


def _hardest_per_label(feats: Tensor, own: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Index of each identity's lowest-cosine sample (official ``CM_Hard``), lowest index on ties.

    Args:
        feats: (N, D) unit features.
        own: (N, D) the prototype of each sample's identity.
        labels: (N,) identities.
        num_classes: C.

    Returns:
        (C,) sample index per identity; N for identities absent from ``labels``.
    """
    cos = (feats * own).sum(dim=1)  # (N,) cosine of each sample to its own prototype
    lowest = cos.new_full((num_classes,), torch.inf).scatter_reduce_(0, labels, cos, "amin")  # (C,)
    num = labels.numel()
    index = torch.arange(num, device=labels.device)  # (N,)
    # Samples at their identity's minimum keep their index, the others get N; the per-id min is the pick.
    index = torch.where(cos == lowest[labels], index, num)
    return index.new_full((num_classes,), num).scatter_reduce_(0, labels, index, "amin")  # (C,)
