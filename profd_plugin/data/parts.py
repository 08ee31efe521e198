"""The OpenPifPaf field vocabulary and the part groupings: data, not code (no torch import).

BPBReID/ProFD mask files hold 36 OpenPifPaf confidence fields: 17 COCO keypoint maps (``PIFPAF_KEYPOINTS``)
followed by 19 limb fields (``PIFPAF_LIMBS``, OpenPifPaf's COCO skeleton order). A *grouping* maps each
body part to the fields whose channel-wise maximum forms that part (official ``five_v``:
``pifpaf_mask_transform.py:211-229`` of Cuixxx/ProFD).
"""
from __future__ import annotations

from typing import Dict, Tuple

__all__ = ["PIFPAF_KEYPOINTS", "PIFPAF_LIMBS", "PIFPAF_FIELDS", "NUM_PIFPAF_FIELDS", "PART_GROUPS",
           "part_names"]

PIFPAF_KEYPOINTS: Tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
    "right_knee", "left_ankle", "right_ankle",
)

PIFPAF_LIMBS: Tuple[str, ...] = (
    "left_ankle_to_left_knee", "left_knee_to_left_hip", "right_ankle_to_right_knee",
    "right_knee_to_right_hip", "left_hip_to_right_hip", "left_shoulder_to_left_hip",
    "right_shoulder_to_right_hip", "left_shoulder_to_right_shoulder", "left_shoulder_to_left_elbow",
    "right_shoulder_to_right_elbow", "left_elbow_to_left_wrist", "right_elbow_to_right_wrist",
    "left_eye_to_right_eye", "nose_to_left_eye", "nose_to_right_eye", "left_eye_to_left_ear",
    "right_eye_to_right_ear", "left_ear_to_left_shoulder", "right_ear_to_right_shoulder",
)

#: All 36 field names in file channel order.
PIFPAF_FIELDS: Tuple[str, ...] = PIFPAF_KEYPOINTS + PIFPAF_LIMBS
NUM_PIFPAF_FIELDS = len(PIFPAF_FIELDS)  # 36

#: grouping name -> ordered {part name: member fields}. Part names become prompt words
#: (underscores replaced by spaces), so their order is the order of the part features.
PART_GROUPS: Dict[str, Dict[str, Tuple[str, ...]]] = {
    # Official ProFD grouping (five vertical parts). Hips belong to two parts;
    # left_shoulder_to_left_hip and left_hip_to_right_hip are unused, as in the official code.
    "five_v": {
        "head": (
            "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_eye_to_right_eye",
            "nose_to_left_eye", "nose_to_right_eye", "left_eye_to_left_ear", "right_eye_to_right_ear",
            "left_ear_to_left_shoulder", "right_ear_to_right_shoulder",
        ),
        "upper_arms_torso": (
            "left_elbow", "right_elbow", "left_shoulder", "right_shoulder", "left_shoulder_to_left_elbow",
            "right_shoulder_to_right_elbow", "left_shoulder_to_right_shoulder",
        ),
        "lower_arms_torso": (
            "left_wrist", "right_wrist", "left_hip", "right_hip", "left_elbow_to_left_wrist",
            "right_elbow_to_right_wrist", "right_shoulder_to_right_hip",
        ),
        "legs": (
            "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle_to_left_knee",
            "right_ankle_to_right_knee", "left_knee_to_left_hip", "right_knee_to_right_hip",
        ),
        "feet": ("left_ankle", "right_ankle"),
    },
    # Upper / lower body halves (BPBReID 'two_v'-style).
    "two_v": {
        "upper_body": PIFPAF_KEYPOINTS[:11] + (
            "left_shoulder_to_left_hip", "right_shoulder_to_right_hip", "left_shoulder_to_right_shoulder",
            "left_shoulder_to_left_elbow", "right_shoulder_to_right_elbow", "left_elbow_to_left_wrist",
            "right_elbow_to_right_wrist", "left_eye_to_right_eye", "nose_to_left_eye", "nose_to_right_eye",
            "left_eye_to_left_ear", "right_eye_to_right_ear", "left_ear_to_left_shoulder",
            "right_ear_to_right_shoulder",
        ),
        "lower_body": PIFPAF_KEYPOINTS[11:] + (
            "left_ankle_to_left_knee", "left_knee_to_left_hip", "right_ankle_to_right_knee",
            "right_knee_to_right_hip", "left_hip_to_right_hip",
        ),
    },
    # The whole body as one part.
    "full": {"body": PIFPAF_FIELDS},
}


def part_names(grouping: str) -> Tuple[str, ...]:
    """Ordered part names of ``grouping``; raises KeyError listing the valid groupings."""
    try:
        return tuple(PART_GROUPS[grouping])
    except KeyError:
        raise KeyError(
            f"unknown part grouping '{grouping}' (profd.masks.grouping); "
            f"valid: {', '.join(sorted(PART_GROUPS))}"
        ) from None
