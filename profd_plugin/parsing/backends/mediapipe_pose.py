"""MediaPipe's legacy pose solution: 33 landmarks and a person mask, offline on a CPU (the default backend).

``mediapipe.solutions.pose`` (``static_image_mode=True, enable_segmentation=True``) runs BlazePose's person
detector, its landmark model and its segmentation head; their models ship inside the 0.10.x wheels (only the
"full" landmark model, ``model_complexity=1``: the lite and heavy ones would be downloaded). It finds one
person per image, the most confident one. The 17 COCO keypoints are 17 of its 33 landmarks
(``MEDIAPIPE_TO_COCO``); their ``visibility`` is the keypoint score.
"""
from __future__ import annotations

import warnings
from typing import List, Sequence

import numpy as np

from ...data.masks import PIFPAF_KEYPOINTS
from ..base import BackendError, Person, PoseBackend, register_backend

#: COCO keypoint -> MediaPipe pose landmark index (``mediapipe.solutions.pose.PoseLandmark``)
MEDIAPIPE_TO_COCO = {
    "nose": 0, "left_eye": 2, "right_eye": 5, "left_ear": 7, "right_ear": 8,
    "left_shoulder": 11, "right_shoulder": 12, "left_elbow": 13, "right_elbow": 14,
    "left_wrist": 15, "right_wrist": 16, "left_hip": 23, "right_hip": 24,
    "left_knee": 25, "right_knee": 26, "left_ankle": 27, "right_ankle": 28,
}
_LANDMARKS = np.array([MEDIAPIPE_TO_COCO[name] for name in PIFPAF_KEYPOINTS])  # (17,)
BUNDLED_MODEL_COMPLEXITY = 1  # pose_landmark_full.tflite, the landmark model inside the wheel
_INSTALL_HINT = "pip install -e '.[masks]' (docs/DATASETS.md, 'Making masks')"


@register_backend("mediapipe")
class MediaPipePose(PoseBackend):
    """BlazePose through ``mediapipe.solutions.pose``.

    Args:
        weights: not used (the models are in the wheel); must be empty.
        device: must be ``cpu`` (the Python solution runs on the CPU).
        min_confidence: the person detector's ``min_detection_confidence``.

    Raises:
        BackendError: mediapipe is missing or lacks the legacy solution, or an unsupported option.
    """

    def __init__(self, *, weights: str = "", device: str = "cpu", min_confidence: float = 0.5) -> None:
        if weights:
            raise BackendError("the mediapipe backend has its models built in; --weights is for torchvision")
        if device != "cpu":
            raise BackendError(f"the mediapipe backend runs on the CPU only, got device '{device}'")
        try:
            from mediapipe.python.solutions import pose
        except ImportError as e:
            raise BackendError(f"mediapipe's legacy pose solution is not importable ({e}); {_INSTALL_HINT}")
        self._pose = pose.Pose(
            static_image_mode=True, model_complexity=BUNDLED_MODEL_COMPLEXITY, enable_segmentation=True,
            min_detection_confidence=min_confidence,
        )

    def predict(self, images: Sequence[np.ndarray]) -> List[List[Person]]:
        return [self._predict_one(image) for image in images]

    def _predict_one(self, image: np.ndarray) -> List[Person]:
        H, W = image.shape[:2]
        with warnings.catch_warnings():  # protobuf 4 deprecation warning on every call
            warnings.simplefilter("ignore", UserWarning)
            result = self._pose.process(np.ascontiguousarray(image))
        if result.pose_landmarks is None or result.segmentation_mask is None:
            return []
        landmarks = result.pose_landmarks.landmark
        xyv = np.array([(landmarks[i].x, landmarks[i].y, landmarks[i].visibility) for i in _LANDMARKS])
        mask = result.segmentation_mask  # (H, W) float32 in [0, 1]
        keypoints = xyv[:, :2] * (W, H)  # normalised -> input pixels
        return [Person(keypoints=keypoints, scores=np.clip(xyv[:, 2], 0, 1), mask=np.clip(mask, 0, 1))]

    def close(self) -> None:
        self._pose.close()
