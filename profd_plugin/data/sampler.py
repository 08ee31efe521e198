"""Rank-sharded P x K identity sampling for the data manager.

``ShardedIdentitySampler`` keeps torchreid's ``RandomIdentitySampler`` semantics (P identities x K
instances per global batch) under distributed training: every rank draws the same full sequence and
takes every ``world_size``-th identity group. (Loader workers need no ``worker_init_fn``: torch seeds
``random``, numpy and torch in each worker from the loader's ``generator``.)
"""

from __future__ import annotations

import random
from typing import Iterator, List, Optional

import numpy as np
import torch
from torch.utils.data import Sampler

__all__ = ["ShardedIdentitySampler"]


class ShardedIdentitySampler(Sampler):
    """Shard a P x K identity sampler over ranks, keeping each identity's K indices together.

    Every ``__iter__`` draws the FULL sequence of ``base_sampler`` under the seed ``seed + epoch``
    (python ``random``, numpy and torch global RNG states are saved and restored around it, so
    augmentation randomness is untouched), cuts it into groups of ``num_instances`` and yields the
    groups ``g`` with ``g % world_size == rank``. All ranks thus agree on the sequence, and each global
    batch of P identities splits into ``P / world_size`` identities per rank. The shard of an epoch is
    drawn once and cached, so ``len()`` is exact (the host sampler's ``len()`` is an over-estimate).

    Args:
        base_sampler: the host sampler (``RandomIdentitySampler`` built with the global batch size).
        rank, world_size: this process and the number of processes.
        num_instances: K.
        seed: base seed (``cfg.train.seed``).
    """

    def __init__(
        self, base_sampler: Sampler, rank: int, world_size: int, num_instances: int, seed: int = 0
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        self.base_sampler = base_sampler
        self.rank, self.world_size = rank, world_size
        self.num_instances = num_instances
        self.seed = seed
        self.epoch = 0
        self._cache: Optional[tuple] = None  # (epoch, this rank's indices)

    def set_epoch(self, epoch: int) -> None:
        """Use the sequence of ``epoch`` on the next ``__iter__`` (call it on every rank each epoch)."""
        self.epoch = epoch

    def _full_sequence(self) -> List[int]:
        seed = self.seed + self.epoch
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            random.seed(seed)
            np.random.seed(seed % 2**32)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return [int(i) for i in self.base_sampler]
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)

    def _shard(self) -> List[int]:
        if self._cache is None or self._cache[0] != self.epoch:  # one draw per epoch
            indices, k = self._full_sequence(), self.num_instances
            groups = range(self.rank, len(indices) // k, self.world_size)
            self._cache = (self.epoch, [i for g in groups for i in indices[g * k : (g + 1) * k]])
        return self._cache[1]

    def __iter__(self) -> Iterator[int]:
        return iter(self._shard())

    def __len__(self) -> int:
        """Exact length of this epoch's shard (unlike the host sampler's estimate)."""
        return len(self._shard())
