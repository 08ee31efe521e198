"""Prototype memory banks for general knowledge preservation (paper Sec. 4.3, Eq. 15-18).

Official code: ``ClusterMemoryAMP(temp=0.05, momentum=0.2, use_hard=True)`` (Cuixxx/ProFD
``losses/ClusterMemoryAMP.py``), initialised in the engine (``part_based_engine.py:86-109``) and used in
its loss (``part_based_engine.py:184-199``). Two banks: K_g on the BNNeck global feature (D) and K_p on
the BNNeck concatenated parts (K*D). The loss is CE(normalize(x) K^T / tau, y) with K a constant; the
update (``CM_Hard``, ``ClusterMemoryAMP.py:84-118``) moves each identity's prototype towards its HARDEST
sample of the batch (lowest cosine to the prototype): K[y] <- m K[y] + (1 - m) z_hard, then renormalises.

:class:`MemoryBanks` is the one owner of this state: the initialisation pass (fed the model's
mask-pooled features), the weighted PCL loss terms, the momentum update, DDP synchronisation (features of
every rank are all-gathered, so the banks stay identical on every rank) and checkpointing (the
prototypes are module buffers; unlike the official plain tensors, checkpoints carry them).

Shape shorthand:
    N: batch size
    C: number of identities
    D: feature width of a bank (D for the global bank, K*D for the part bank)
"""
from __future__ import annotations

from typing import Dict, Iterable, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..choices import MEMORY_UPDATE_MODES
from ..distributed import all_gather_cat

__all__ = ["PrototypeMemory", "MemoryBanks", "MEMORY_UPDATE_MODES", "prototype_contrastive_loss"]


def prototype_contrastive_loss(features: Tensor, prototypes: Tensor, labels: Tensor,
                               temperature: float) -> Tensor:
    """PCL (Eq. 16 / 18): CE(normalize(features) K^T / tau, labels); the prototypes are a constant.

    Args:
        features: (N, D). prototypes: (C, D) unit vectors. labels: (N,). temperature: tau (0.05).
    """
    logits = F.normalize(features, dim=1) @ prototypes.detach().to(features.dtype).t() / temperature  # (N, C)
    return F.cross_entropy(logits, labels)


class PrototypeMemory(nn.Module):
    """One bank: per-identity unit-norm prototypes with a PCL loss and a momentum update.

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

    def __init__(self, num_classes: int, dim: int, *, temperature: float = 0.05, momentum: float = 0.2,
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
        """PCL loss (Eq. 16 / 18) of ``features`` (N, D) with identities ``labels`` (N,): a scalar."""
        return prototype_contrastive_loss(features, self.prototypes, labels, self.temperature)

    @torch.no_grad()
    def update(self, features: Tensor, labels: Tensor) -> None:
        """Momentum update of the prototypes of the identities in the batch (Eq. 15 / 17).

        For each identity y in ``labels``: K[y] <- normalize(m K[y] + (1 - m) z), with z its hardest
        sample (``hard``: lowest cosine to K[y], the lowest batch index among equal minima) or its mean
        (``mean``) of the L2-normalised features. All identities are updated at once (no Python loop).

        Args:
            features: (N, D) features (detached or not; already gathered across ranks under DDP).
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


class MemoryBanks(nn.Module):
    """K_g and K_p: initialisation pass, weighted PCL terms, momentum update, DDP sync, checkpointed state.

    A bank whose loss weight is 0 is neither used nor updated (its term is not returned).

    Args:
        num_classes: C training identities.
        global_dim: D, width of the BNNeck global feature.
        parts_dim: K*D, width of the BNNeck concatenated parts.
        temperature, momentum, update: see :class:`PrototypeMemory` (``profd.loss.pcl_*``).
        weight_global: weight of L_pcl^g (Eq. 16, ``profd.loss.pcl_global``, official 1).
        weight_parts: weight of L_pcl^p (Eq. 18, ``profd.loss.pcl_parts``, official 1).
    """

    #: loss keys of :meth:`losses`, in the order of :data:`profd_plugin.losses.LOSS_KEYS`
    KEYS = ("loss_pcl_global", "loss_pcl_parts")

    def __init__(self, num_classes: int, global_dim: int, parts_dim: int, *, temperature: float = 0.05,
                 momentum: float = 0.2, update: str = "hard", weight_global: float = 1.0,
                 weight_parts: float = 1.0) -> None:
        super().__init__()
        bank = dict(temperature=temperature, momentum=momentum, update=update)
        self.bank_global = PrototypeMemory(num_classes, global_dim, **bank)
        self.bank_parts = PrototypeMemory(num_classes, parts_dim, **bank)
        self.weights = {"loss_pcl_global": float(weight_global), "loss_pcl_parts": float(weight_parts)}

    @property
    def num_classes(self) -> int:
        """C."""
        return self.bank_global.num_classes

    @property
    def initialized(self) -> bool:
        """Whether both banks hold class centroids (set by :meth:`initialize` or a loaded checkpoint)."""
        return bool(self.bank_global.initialized) and bool(self.bank_parts.initialized)

    def reset(self) -> None:
        """Mark the banks as not initialised (the next training run re-runs the init pass)."""
        self.bank_global.initialized.fill_(False)
        self.bank_parts.initialized.fill_(False)

    def _pairs(self) -> Tuple[Tuple[str, PrototypeMemory], ...]:
        return (("loss_pcl_global", self.bank_global), ("loss_pcl_parts", self.bank_parts))

    @torch.no_grad()
    def initialize(self, batches: Iterable[Tuple[Tensor, Tensor, Tensor]]) -> int:
        """Initialise both banks from the init pass (official: one eval pass over the training loader).

        Args:
            batches: ``(global_bn (N, D), masked_concat_bn (N, K*D), pids (N,))`` per batch, e.g. from
                ``ProFD.pooled_part_features``; under DDP each rank passes its own batches and every
                rank's features are all-gathered (one collective per batch), so all ranks end equal.

        Returns:
            The number of samples (over all ranks) the centroids were computed from.
        """
        dim = self.bank_global.dim
        chunks = [all_gather_cat(torch.cat([g.float(), p.float(), pids.unsqueeze(1).float()], 1))
                  for g, p, pids in batches]  # one all-gather per batch: (N * world, D + K*D + 1)
        packed = torch.cat(chunks)
        labels = packed[:, -1].long()
        self.bank_global.initialize(packed[:, :dim], labels, normalize_first=True)
        self.bank_parts.initialize(packed[:, dim:-1], labels, normalize_first=False)
        return int(packed.shape[0])

    def losses(self, global_bn: Tensor, concat_bn: Tensor, pids: Tensor) -> Dict[str, Tensor]:
        """Weighted PCL terms ``{"loss_pcl_global": w L_pcl^g, "loss_pcl_parts": w L_pcl^p}`` (fp32).

        Args:
            global_bn: (N, D) BNNeck global features. concat_bn: (N, K*D) BNNeck concatenated parts.
            pids: (N,) identities in [0, C).
        """
        terms = {}
        with torch.autocast(global_bn.device.type, enabled=False):  # 1/tau = 20 logits: keep fp32
            for (key, bank), feats in zip(self._pairs(), (global_bn, concat_bn)):
                if self.weights[key] != 0.0:
                    terms[key] = self.weights[key] * bank(feats.float(), pids)
        return terms

    @torch.no_grad()
    def update(self, global_bn: Tensor, concat_bn: Tensor, pids: Tensor) -> None:
        """Momentum update with this step's features of every rank (one all-gather under DDP)."""
        dim = global_bn.shape[1]
        packed = torch.cat([global_bn.detach().float(), concat_bn.detach().float(),
                            pids.unsqueeze(1).float()], dim=1)  # (N, D + K*D + 1)
        packed = all_gather_cat(packed)
        labels = packed[:, -1].long()
        for (key, bank), feats in zip(self._pairs(), (packed[:, :dim], packed[:, dim:-1])):
            if self.weights[key] != 0.0:
                bank.update(feats, labels)
