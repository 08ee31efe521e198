"""Evaluation shared by every engine of the plugin: feature extraction, distance, ranking, results.

``EvaluationMixin`` overrides torchreid's ``Engine.test`` / ``Engine._evaluate`` so that

* ranking uses the vectorised :func:`profd_plugin.metrics.evaluate_rank` (torchreid's protocol, same
  numbers, no crash on small galleries);
* each target's ``rank1, rank5, rank10, mAP`` (fractions) are kept in ``self.results`` for the table
  and ``results.json``;
* a model may return either a feature tensor (torchreid built-ins) or
  :class:`~profd_plugin.modeling.outputs.ProFDEmbeddings` (ProFD), which is compared with the
  visibility-aware distance (paper Eq. 14, official form by default);
* ``test.visrank`` draws the plugin's ranked-list PNGs for ProFD (``profd_plugin.visualize``) and
  torchreid's own JPEG strips for built-ins.
"""
from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import fields
from typing import Any, Callable, Dict, Sequence, Tuple

import numpy as np
import torch
from torch.nn import functional as F

from .errors import DatasetError
from .metrics import evaluate_rank_host_compatible, visibility_aware_distance

logger = logging.getLogger(__name__)

REPORTED_RANKS = (1, 5, 10)


def _map_fields(fn: Callable[..., Any], *feats: Any) -> Any:
    """Apply ``fn`` to tensors, or field-wise to dataclasses of tensors (``None`` fields stay ``None``)."""
    first = feats[0]
    if torch.is_tensor(first):
        return fn(*feats)
    values = {}
    for f in fields(first):
        items = [getattr(x, f.name) for x in feats]
        values[f.name] = fn(*items) if torch.is_tensor(items[0]) else items[0]
    return type(first)(**values)


def eval_forward(forward: Callable[[torch.Tensor], Any], images: torch.Tensor, flip: bool) -> Any:
    """The evaluation's features of a batch: ``forward(images)``, averaged with the features of the mirrored
    batch when ``flip`` (``profd.test.flip``); shared by the engines and ``ProFDExtractor``."""
    out = forward(images)
    if flip:
        flipped = forward(torch.flip(images, dims=[3]))
        out = _map_fields(lambda a, b: (a + b) / 2, out, flipped)
    return out


class EvaluationMixin:
    """Mixed into torchreid ``Engine`` subclasses (first in the MRO).

    Attributes read: ``self.model``, ``self.test_loader``, ``self.datamanager``, ``self.use_gpu``,
    ``self.writer``, ``self.epoch``; and the optional evaluation options set by ``configure_eval``.
    """

    results: Dict[str, Dict[str, float]]
    # evaluation options (``configure_eval``); the distance ones apply to ProFD embeddings only
    eval_distance: str = "visibility"
    eval_metric: str = "euclidean"
    eval_chunk_size: int = 512
    eval_flip: bool = False
    eval_device: str = "auto"

    def configure_eval(self, *, distance: str, metric: str, chunk_size: int, flip: bool, device: str) -> None:
        """Set the evaluation options (``cfg.profd.test.*``)."""
        self.eval_distance, self.eval_metric, self.eval_chunk_size = distance, metric, chunk_size
        self.eval_flip, self.eval_device = flip, device

    @property
    def _device(self) -> torch.device:
        return torch.device("cuda") if self.use_gpu else torch.device("cpu")

    def test(self, dist_metric: str = "euclidean", normalize_feature: bool = False, visrank: bool = False,
             visrank_topk: int = 10, save_dir: str = "", use_metric_cuhk03: bool = False,
             ranks: Sequence[int] = (1, 5, 10, 20), rerank: bool = False) -> float:
        """Evaluate every target; fills ``self.results`` and returns rank-1 of the last target."""
        self.set_model_mode("eval")
        self.results = OrderedDict() if not hasattr(self, "results") else self.results
        rank1 = 0.0
        for name in self.test_loader.keys():
            domain = "source" if name in self.datamanager.sources else "target"
            print(f"##### Evaluating {name} ({domain}) #####")
            rank1, mAP = self._evaluate(
                dataset_name=name, query_loader=self.test_loader[name]["query"],
                gallery_loader=self.test_loader[name]["gallery"], dist_metric=dist_metric,
                normalize_feature=normalize_feature, visrank=visrank, visrank_topk=visrank_topk,
                save_dir=save_dir, use_metric_cuhk03=use_metric_cuhk03, ranks=ranks, rerank=rerank,
            )
            if self.writer is not None:
                self.writer.add_scalar(f"Test/{name}/rank1", rank1, self.epoch)
                self.writer.add_scalar(f"Test/{name}/mAP", mAP, self.epoch)
        return float(rank1)

    def extract_features(self, input: torch.Tensor) -> Any:
        """Eval forward through the bare model: a DDP wrapper would broadcast buffers from rank 0 on
        every forward, a collective that deadlocks when only rank 0 evaluates."""
        return getattr(self.model, "module", self.model)(input)

    @torch.no_grad()
    def extract_dataset_features(self, loader) -> Tuple[Any, np.ndarray, np.ndarray]:
        """Run the model over a test loader; returns (features on CPU, pids, camids)."""
        feats, pids, camids = [], [], []
        for data in loader:  # fp32, as the official evaluation
            imgs, pid, camid = self.parse_data_for_eval(data)
            imgs = imgs.to(self._device, non_blocking=True)
            out = eval_forward(self.extract_features, imgs, self.eval_flip)
            feats.append(_map_fields(lambda t: t.float().cpu(), out))
            pids.append(np.asarray(pid))
            camids.append(np.asarray(camid))
        return _map_fields(lambda *ts: torch.cat(ts, 0), *feats), np.concatenate(pids), np.concatenate(camids)

    def compute_distance(self, qf: Any, gf: Any, dist_metric: str, normalize_feature: bool) -> torch.Tensor:
        """Query x gallery distances for tensors (torchreid metric) or ProFD embeddings (Eq. 14)."""
        from torchreid.reid import metrics as host_metrics

        if torch.is_tensor(qf):
            if normalize_feature:
                qf, gf = F.normalize(qf, p=2, dim=1), F.normalize(gf, p=2, dim=1)
            return host_metrics.compute_distance_matrix(qf, gf, dist_metric)
        device = self.eval_device
        device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        distmat = visibility_aware_distance(
            qf.global_feat, qf.part_feats, qf.visibility, gf.global_feat, gf.part_feats, gf.visibility,
            metric=self.eval_metric, mode=self.eval_distance, chunk_size=self.eval_chunk_size,
            device=torch.device(device),
        )
        return distmat.cpu()

    @torch.no_grad()
    def _evaluate(self, dataset_name: str = "", query_loader=None, gallery_loader=None,
                  dist_metric: str = "euclidean", normalize_feature: bool = False, visrank: bool = False,
                  visrank_topk: int = 10, save_dir: str = "", use_metric_cuhk03: bool = False,
                  ranks: Sequence[int] = (1, 5, 10, 20), rerank: bool = False) -> Tuple[float, float]:
        t0 = time.time()
        qf, q_pids, q_camids = self.extract_dataset_features(query_loader)
        gf, g_pids, g_camids = self.extract_dataset_features(gallery_loader)
        t1 = time.time()
        distmat = self.compute_distance(qf, gf, dist_metric, normalize_feature)
        if rerank:
            from torchreid.reid.utils import re_ranking

            distmat_qq = self.compute_distance(qf, qf, dist_metric, normalize_feature)
            distmat_gg = self.compute_distance(gf, gf, dist_metric, normalize_feature)
            distmat = torch.from_numpy(re_ranking(distmat.numpy(), distmat_qq.numpy(), distmat_gg.numpy()))
        distmat = distmat.numpy()
        t2 = time.time()
        try:
            cmc, mAP = evaluate_rank_host_compatible(distmat, q_pids, g_pids, q_camids, g_camids,
                                                     use_metric_cuhk03=use_metric_cuhk03)
        except ValueError as e:  # e.g. no query identity in the gallery: the data, not the code
            raise DatasetError(f"target '{dataset_name}': {e}") from None
        t3 = time.time()
        row = {f"rank{r}": float(cmc[min(r, len(cmc)) - 1]) for r in REPORTED_RANKS}
        row["mAP"] = float(mAP)
        self.results[dataset_name] = row
        print(f"{dataset_name}: {len(q_pids)} query x {len(g_pids)} gallery | features {t1 - t0:.1f}s, "
              f"distance {t2 - t1:.1f}s, ranking {t3 - t2:.2f}s")
        print(f"** Results ** mAP: {mAP:.1%} " + " ".join(
            f"R{r}: {cmc[min(r, len(cmc)) - 1]:.1%}" for r in ranks))
        if visrank:
            out_dir = f"{save_dir}/visrank_{dataset_name}"
            self.draw_rankings(dataset_name, distmat, qf, gf, out_dir, visrank_topk)
        return float(cmc[0]), float(mAP)

    def draw_rankings(self, dataset_name: str, distmat: np.ndarray, qf: Any, gf: Any, out_dir: str,
                      topk: int) -> None:
        """``test.visrank``: ProFD models get the plugin's ranked-list PNGs (per-part visibility and
        distances, ``profd_plugin.visualize``); torchreid built-ins keep torchreid's own JPEG strips."""
        items = self.datamanager.fetch_test_loaders(dataset_name)
        if torch.is_tensor(qf):
            from torchreid.reid.utils import visualize_ranked_results

            visualize_ranked_results(distmat, items, self.datamanager.data_type, width=self.datamanager.width,
                                     height=self.datamanager.height, save_dir=out_dir, topk=topk)
            return
        from .visualize import save_ranked_lists

        paths = save_ranked_lists(out_dir, items[0], items[1], distmat, qf, gf, topk=topk,
                                  part_names=self.datamanager.part_names, metric=self.eval_metric)
        print(f"ranked lists of {len(paths)} queries written to {out_dir}")
