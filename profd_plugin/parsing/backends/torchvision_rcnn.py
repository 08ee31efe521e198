"""torchvision's COCO Keypoint R-CNN (17 keypoints) + Mask R-CNN (person masks), closest to the published
PifPaf + Mask R-CNN pipeline; CPU or GPU.

The weights are never downloaded here: they are read from a folder holding torchvision's files under their
own names (default: torchvision's cache, ``$TORCH_HOME/hub/checkpoints``), so the tool runs offline. Each
Mask R-CNN person becomes a :class:`Person` whose keypoints come from the Keypoint R-CNN detection with the
most overlapping box (scores = sigmoid of torchvision's keypoint logits); without one, its keypoint scores
are 0.
"""
from __future__ import annotations

import os.path as osp
from typing import Dict, List, Sequence, Tuple

import numpy as np

from ..base import BackendError, Person, PoseBackend, register_backend

#: model -> (torchvision weights enum, its attribute)
WEIGHTS = {"keypoint": ("KeypointRCNN_ResNet50_FPN_Weights", "COCO_V1"),
           "mask": ("MaskRCNN_ResNet50_FPN_Weights", "COCO_V1")}
COCO_PERSON = 1  # Mask R-CNN label of "person"
NUM_COCO_CLASSES = 91  # Mask R-CNN's COCO label space (with the unused ids)
MIN_PAIR_IOU = 0.5  # a keypoint detection belongs to a mask detection from this box IoU on


def weight_urls() -> Dict[str, str]:
    """model -> download URL of its weights (from torchvision's weight enums)."""
    from torchvision.models import detection

    return {kind: getattr(getattr(detection, enum), attr).url for kind, (enum, attr) in WEIGHTS.items()}


def default_weights_dir() -> str:
    """torchvision's download cache, ``torch.hub.get_dir()/checkpoints``."""
    import torch

    return osp.join(torch.hub.get_dir(), "checkpoints")


def weight_files(folder: str) -> Dict[str, str]:
    """model -> path of its weights file in ``folder``.

    Raises:
        BackendError: a file is missing; one line saying what to download and where to put it.
    """
    urls = weight_urls()
    paths = {kind: osp.join(folder, osp.basename(url)) for kind, url in urls.items()}
    missing = [kind for kind, path in paths.items() if not osp.isfile(path)]
    if missing:
        raise BackendError(
            f"torchvision backend: weights not found in {folder}: download "
            + " and ".join(urls[k] for k in missing)
            + f" into {folder} (or into a folder given with --weights DIR)"
        )
    return paths


def build_models(paths: Dict[str, str], device: str) -> Tuple["object", "object"]:
    """``(keypoint R-CNN, mask R-CNN)`` in eval mode on ``device``, weights loaded from ``paths``."""
    import torch
    from torchvision.models import detection

    keypoint = detection.keypointrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=2,
                                                   num_keypoints=17)
    mask = detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=NUM_COCO_CLASSES)
    for model, kind in ((keypoint, "keypoint"), (mask, "mask")):
        try:
            model.load_state_dict(torch.load(paths[kind], map_location="cpu", weights_only=True))
        except Exception as e:  # noqa: BLE001 - a wrong or damaged file: one line
            raise BackendError(f"torchvision backend: cannot load {paths[kind]} ({type(e).__name__}: {e})")
    return keypoint.eval().to(device), mask.eval().to(device)


def pair_people(keypoint_out: dict, mask_out: dict, min_confidence: float) -> List[Person]:
    """torchvision outputs of one image -> people (see the module docstring).

    Args:
        keypoint_out: Keypoint R-CNN output (``boxes (N, 4)``, ``scores (N,)``, ``keypoints (N, 17, 3)``,
            ``keypoints_scores (N, 17)``).
        mask_out: Mask R-CNN output (``boxes (M, 4)``, ``labels (M,)``, ``scores (M,)``,
            ``masks (M, 1, H, W)``).
        min_confidence: detection score threshold of both models.
    """
    import torch
    from torchvision.ops import box_iou

    is_person = (mask_out["labels"] == COCO_PERSON) & (mask_out["scores"] >= min_confidence)
    people_idx = torch.nonzero(is_person)[:, 0]
    kp_idx = torch.nonzero(keypoint_out["scores"] >= min_confidence)[:, 0]
    if len(people_idx) == 0:
        return []
    iou = box_iou(mask_out["boxes"][people_idx], keypoint_out["boxes"][kp_idx])  # (P, K)
    people = []
    for row, m in enumerate(people_idx.tolist()):
        keypoints, scores = np.zeros((17, 2)), np.zeros(17)
        if iou.shape[1] and float(iou[row].max()) >= MIN_PAIR_IOU:
            k = int(kp_idx[int(iou[row].argmax())])
            keypoints = keypoint_out["keypoints"][k, :, :2].cpu().numpy().astype(float)
            scores = torch.sigmoid(keypoint_out["keypoints_scores"][k]).cpu().numpy().astype(float)
        mask = mask_out["masks"][m, 0].cpu().numpy().astype(np.float32)  # (H, W)
        people.append(Person(keypoints=keypoints, scores=scores, mask=mask))
    return people


@register_backend("torchvision")
class TorchvisionRCNN(PoseBackend):
    """Keypoint R-CNN + Mask R-CNN (ResNet-50 FPN, COCO), batched.

    Args:
        weights: folder holding ``keypointrcnn_resnet50_fpn_coco-*.pth`` and
            ``maskrcnn_resnet50_fpn_coco-*.pth``
            (default: torchvision's cache).
        device: torch device.
        min_confidence: detection score threshold.

    Raises:
        BackendError: a weights file is missing or unreadable (the message says what to download, where).
    """

    def __init__(self, *, weights: str = "", device: str = "cpu", min_confidence: float = 0.5) -> None:
        self.device, self.min_confidence = device, min_confidence
        self._keypoint, self._mask = build_models(weight_files(weights or default_weights_dir()), device)

    def predict(self, images: Sequence[np.ndarray]) -> List[List[Person]]:
        import torch

        tensors = [torch.from_numpy(np.array(img)).permute(2, 0, 1).to(self.device).float() / 255
                   for img in images]  # (3, H, W) in [0, 1]; np.array: a writable copy
        with torch.inference_mode():
            keypoint_outs, mask_outs = self._keypoint(tensors), self._mask(tensors)
        return [pair_people(k, m, self.min_confidence) for k, m in zip(keypoint_outs, mask_outs)]
