"""Drawing one synthetic pedestrian image and its PifPaf fields (used by ``synthetic.py``).

Outfits (what an identity wears), pose and skeleton, the person painted as a label map and coloured,
the camera's background and image effects, the occluders and the detector-like confidence fields. Every
function takes its randomness as a ``np.random.Generator``; ``synthetic.py`` owns the seeds and RNG
streams, the dataset plan and the files, so the names here stay private to the generator.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import cv2
import numpy as np
from PIL import Image, ImageDraw

from .fields import LIMB_ENDS, cell_coverage, cell_support, field_sigmas, render_fields
from .parts import NUM_PIFPAF_FIELDS, PIFPAF_KEYPOINTS

COVERAGE_RANGE = (0.2, 0.6)  # fraction of the body's pixels an occluder hides
OCCLUDER_KINDS = ("car", "box", "pole", "sign", "person")
SKIN, HAIR, UPPER, LOWER, SHOES, BAG = 1, 2, 3, 4, 5, 6  # values of the person label map (0 = not person)

CLOTH = np.array([
    (25, 25, 28), (235, 235, 230), (128, 128, 128), (30, 40, 90), (40, 90, 190), (130, 180, 225),
    (190, 30, 35), (110, 20, 30), (40, 120, 60), (100, 110, 50), (200, 180, 130), (110, 70, 40),
    (230, 200, 40), (230, 140, 170), (110, 60, 140), (235, 120, 30), (70, 100, 140), (20, 110, 120),
])
SKIN_TONES = np.array([(245, 210, 185), (225, 180, 140), (190, 140, 100), (140, 95, 65), (95, 65, 45)])
MATERIALS = np.array([(150, 110, 70), (110, 110, 110), (60, 80, 120), (70, 110, 60)])  # boxes, poles
HAIR_TONES = np.array([(20, 18, 15), (60, 40, 25), (110, 75, 40), (190, 160, 100), (140, 140, 140)])
_KP = {name: i for i, name in enumerate(PIFPAF_KEYPOINTS)}


def _rgb(colour) -> Tuple[int, ...]:
    return tuple(int(v) for v in np.clip(colour, 0, 255))


def _colour(rng: np.random.Generator, palette: np.ndarray, avoid: Optional[List[int]] = None) -> List[int]:
    """A jittered palette colour, at L1 distance > 120 from ``avoid`` when given."""
    ok = np.ones(len(palette), bool) if avoid is None else np.abs(palette - avoid).sum(1) > 120
    return list(_rgb(palette[rng.choice(np.flatnonzero(ok))] + rng.integers(-12, 13, 3)))


def _random_upper(rng: np.random.Generator, avoid: Optional[dict] = None) -> dict:
    """The outfit's upper half: hair or hat, upper garment (with sleeves) and bag."""
    style = str(rng.choice(["short", "short", "long", "hat"]))
    hair = _colour(rng, CLOTH if style == "hat" else HAIR_TONES)
    colour = _colour(rng, CLOTH, avoid and avoid["upper"]["color"])
    pattern = str(rng.choice(["solid", "solid", "hstripes", "vstripes", "check", "block"]))
    upper = {"color": colour, "color2": _colour(rng, CLOTH, colour), "pattern": pattern,
             "sleeves": str(rng.choice(["long", "short"]))}
    bag = {"kind": str(rng.choice(["none", "none", "backpack", "shoulder"])), "color": _colour(rng, CLOTH)}
    return {"hair": {"style": style, "color": hair}, "upper": upper, "bag": bag}


def _random_lower(rng: np.random.Generator, avoid: Optional[dict] = None) -> dict:
    """The outfit's lower half: trousers, shorts or skirt, and shoes."""
    colour = _colour(rng, CLOTH, avoid and avoid["lower"]["color"])
    lower = {"color": colour, "color2": _colour(rng, CLOTH, colour),
             "pattern": str(rng.choice(["solid", "solid", "solid", "hstripes", "check", "block"])),
             "style": str(rng.choice(["trousers", "trousers", "shorts", "skirt"]))}
    return {"lower": lower, "shoes": _colour(rng, CLOTH)}


def _random_outfit(rng: np.random.Generator) -> dict:
    build = {"height": float(rng.uniform(0.94, 1.04)), "width": float(rng.uniform(0.88, 1.15))}
    return {"skin": _colour(rng, SKIN_TONES), "build": build, **_random_upper(rng), **_random_lower(rng)}


def _pose(rng: np.random.Generator, build: dict, H: int, W: int) -> Tuple[np.ndarray, dict]:
    """Random view, scale, offset, stance and leg/arm swing.

    Returns:
        ``(keypoints (17, 2) xy in pixels, geometry)``; geometry holds the view, the person height ``hp`` in
        pixels, the body origin ``(cx, top)`` and ``rel``: keypoints as ``(xy - origin) / hp``.
    """
    view = str(rng.choice(["front", "back", "side"], p=[0.4, 0.4, 0.2]))
    hp = H * rng.uniform(0.78, 0.95) * build["height"]
    cx, top = W / 2 + rng.uniform(-0.08, 0.08) * W, (H - hp) / 2 + rng.uniform(-0.04, 0.04) * H
    side, face = float(view == "side"), float(rng.choice([-1.0, 1.0]))  # face: walking direction (side view)
    lr = -1.0 if view == "back" else 1.0  # image-x sign of the person's left side
    wf = (rng.uniform(0.45, 0.65) if side else rng.uniform(0.9, 1.05)) * build["width"]
    swing, stance = rng.uniform(-0.35, 0.35) * (0.3 + 0.7 * side), rng.uniform(0.0, 0.1) * (1 - side)
    fo, eye, ear = 0.03 * face * side, 0.022 * lr * (1 - side), 0.05 * lr * (1 - 0.7 * side)
    rel = {"nose": (1.3 * fo, 0.085), "left_eye": (eye + fo, 0.065), "right_eye": (fo - eye, 0.065),
           "left_ear": (ear, 0.075), "right_ear": (-ear, 0.075)}

    def limb(start, length, angle):  # angle from the downward vertical, towards +x
        return start + length * np.array([np.sin(angle), np.cos(angle)])

    for s, name in ((1, "left"), (-1, "right")):
        sh, hip = np.array([s * lr * 0.105 * wf, 0.19]), np.array([s * lr * 0.07 * wf, 0.5])
        thigh = s * lr * stance + s * swing * face
        upper_arm = s * lr * rng.uniform(0.06, 0.2) - 1.2 * s * swing * face  # arms swing against the legs
        forearm = upper_arm + rng.uniform(-0.1, 0.4) * (face if side else -s * lr)  # elbows bend forward/in
        knee, elbow = limb(hip, 0.235, thigh), limb(sh, 0.16, upper_arm)
        rel.update({f"{name}_shoulder": sh, f"{name}_hip": hip, f"{name}_knee": knee, f"{name}_elbow": elbow,
                    f"{name}_ankle": limb(knee, 0.235, 0.6 * thigh + rng.normal(0, 0.05)),
                    f"{name}_wrist": limb(elbow, 0.15, forearm)})
    rel = np.array([rel[n] for n in PIFPAF_KEYPOINTS], float)  # (17, 2)
    g = {"view": view, "hp": hp, "cx": cx, "top": top, "face": face, "side": side, "wf": wf, "rel": rel}
    return rel * hp + (cx, top), g


class _Painter:
    """Paints person labels on an ``L`` image, in body coordinates ``(xy - origin) / hp``."""

    def __init__(self, g: dict, H: int, W: int):
        self.img, self.g = Image.new("L", (W, H), 0), g
        self.draw, self.hp = ImageDraw.Draw(self.img), g["hp"]

    def px(self, x: float, y: float) -> Tuple[float, float]:
        return self.g["cx"] + x * self.hp, self.g["top"] + y * self.hp

    def kp(self, name: str) -> np.ndarray:
        return self.g["rel"][_KP[name]]

    def seg(self, a, b, width: float, label: int) -> None:  # thick segment with round caps
        (ax, ay), (bx, by), r = self.px(*a), self.px(*b), max(1.0, width * self.hp / 2)
        self.draw.line([(ax, ay), (bx, by)], fill=label, width=int(round(2 * r)))
        for x, y in ((ax, ay), (bx, by)):
            self.draw.ellipse([x - r, y - r, x + r, y + r], fill=label)

    def shape(self, kind: str, x0: float, y0: float, x1: float, y1: float, label: int, *args) -> None:
        getattr(self.draw, kind)([*self.px(x0, y0), *self.px(x1, y1)], *args, fill=label)

    def poly(self, points, label: int) -> None:
        self.draw.polygon([self.px(x, y) for x, y in points], fill=label)


def _draw_person(g: dict, outfit: dict, H: int, W: int) -> np.ndarray:
    """The person as a label map ``(H, W) uint8`` (``SKIN``..``BAG``), painted back to front."""
    p = _Painter(g, H, W)
    hair, bag, view, side = outfit["hair"]["style"], outfit["bag"]["kind"], g["view"], g["side"]
    tw, hw = 0.105 * g["wf"] + 0.03, 0.07 * g["wf"] + 0.045  # torso half width at shoulders and hips
    if hair == "long" and view != "back":
        p.shape("ellipse", -0.065, 0.02, 0.065, 0.2, HAIR)
    if bag == "backpack" and view != "back":  # side view: it sticks out behind the back
        back = -g["face"] * side * tw
        p.shape("rectangle", back - tw - 0.02, 0.2, back + tw + 0.02, 0.45, BAG)
    _draw_legs(p, outfit["lower"]["style"], hw)
    if side:  # the far arm is behind the torso
        _draw_arm(p, "right", outfit)
    p.poly([(-tw, 0.18), (tw, 0.18), (hw, 0.5), (-hw, 0.5)], UPPER)
    p.seg(p.kp("left_shoulder"), p.kp("right_shoulder"), 0.06, UPPER)
    if bag == "backpack" and view == "back":
        p.shape("rectangle", -tw + 0.02, 0.21, tw - 0.02, 0.44, BAG)
    for s in ("left", "right") if bag == "backpack" and view == "front" else ():  # straps
        p.seg(p.kp(f"{s}_shoulder"), p.kp(f"{s}_shoulder") + (0, 0.14), 0.015, BAG)
    if bag == "shoulder":
        p.seg(p.kp("left_shoulder"), p.kp("right_hip"), 0.014, BAG)
        x, y = p.kp("right_hip")
        p.shape("rectangle", x - 0.05, y - 0.04, x + 0.04, y + 0.05, BAG)
    for s in ("left",) if side else ("left", "right"):
        _draw_arm(p, s, outfit)
    _draw_head(p, hair, view, 0.015 * g["face"] * side)
    return np.asarray(p.img)


def _draw_legs(p: _Painter, style: str, hw: float) -> None:
    """Legs, shoes, pelvis and skirt; ``style`` is trousers, shorts or skirt."""
    for s in ("left", "right"):
        hip, knee, ankle = p.kp(f"{s}_hip"), p.kp(f"{s}_knee"), p.kp(f"{s}_ankle")
        p.seg(hip, knee, 0.085, SKIN if style == "shorts" else LOWER)
        if style == "shorts":
            p.seg(hip, hip + 0.6 * (knee - hip), 0.09, LOWER)
        p.seg(knee, ankle, 0.068, LOWER if style == "trousers" else SKIN)
        x, y = ankle + (0.025 * p.g["face"] * p.g["side"], 0.015)
        rx = 0.045 if p.g["side"] else 0.033
        p.shape("ellipse", x - rx, y - 0.022, x + rx, y + 0.022, SHOES)
    p.shape("rectangle", -hw, 0.47, hw, 0.57, LOWER)  # pelvis
    if style == "skirt":
        p.poly([(-hw, 0.48), (hw, 0.48), (hw + 0.05, 0.72), (-hw - 0.05, 0.72)], LOWER)


def _draw_arm(p: _Painter, s: str, outfit: dict) -> None:
    """Upper arm, forearm (sleeve or skin) and hand of side ``s`` (``"left"`` or ``"right"``)."""
    p.seg(p.kp(f"{s}_shoulder"), p.kp(f"{s}_elbow"), 0.055, UPPER)
    sleeve = UPPER if outfit["upper"]["sleeves"] == "long" else SKIN
    p.seg(p.kp(f"{s}_elbow"), p.kp(f"{s}_wrist"), 0.045, sleeve)
    p.seg(p.kp(f"{s}_wrist"), p.kp(f"{s}_wrist"), 0.05, SKIN)  # hand


def _draw_head(p: _Painter, hair: str, view: str, x: float) -> None:
    """Neck, head (hair from behind), hair cap or hat at horizontal offset ``x``."""
    p.seg((x, 0.12), (x, 0.18), 0.04, SKIN)
    p.shape("ellipse", x - 0.05, 0.011, x + 0.05, 0.139, HAIR if view == "back" else SKIN)
    if hair == "long" and view == "back":
        p.shape("ellipse", x - 0.065, 0.02, x + 0.065, 0.2, HAIR)
    elif view != "back":  # the top of a slightly larger head ellipse, turned with the head
        tilt = -25 * np.sign(x)
        p.shape("chord", x - 0.055, 0.003, x + 0.055, 0.12, HAIR, 180 + tilt, 360 + tilt)
    if hair == "hat":
        p.shape("rectangle", x - 0.075, 0.045, x + 0.075, 0.058, HAIR)  # brim


def _colourise(labels: np.ndarray, outfit: dict, g: dict) -> np.ndarray:
    """Label map -> RGB ``(H, W, 3) uint8``, with garment patterns anchored to the body."""
    pal = np.array([(0, 0, 0), outfit["skin"], outfit["hair"]["color"], outfit["upper"]["color"],
                    outfit["lower"]["color"], outfit["shoes"], outfit["bag"]["color"],
                    outfit["upper"]["color2"], outfit["lower"]["color2"]], np.uint8)  # 7, 8: second colours
    y = ((np.arange(labels.shape[0]) - g["top"]) / g["hp"]).astype(np.float32)[:, None]
    x = ((np.arange(labels.shape[1]) - g["cx"]) / g["hp"]).astype(np.float32)[None, :]
    yi, xi = np.floor(y / 0.045), np.floor(x / 0.045)  # stripe / check period: 4.5% of the body height
    labels = labels.copy()
    for label, spec, split in ((UPPER, outfit["upper"], 0.33), (LOWER, outfit["lower"], 0.72)):
        pattern = {"solid": np.zeros((1, 1), bool), "hstripes": yi % 2 == 1, "vstripes": xi % 2 == 1,
                   "check": (yi + xi) % 2 == 1, "block": y > split}[spec["pattern"]]
        labels[pattern & (labels == label)] = label + 4
    return np.take(pal, labels, axis=0)


def _camera(rng: np.random.Generator) -> dict:
    """Per-camera colour cast, blur, sensor noise and scene palette, from the camera's own generator."""
    return {"gain": rng.uniform(0.85, 1.15, 3), "bias": rng.uniform(-15, 15), "blur": rng.uniform(0.3, 1.1),
            "noise": rng.uniform(1.5, 5.0), "wall": rng.uniform(60, 200) + rng.uniform(-35, 35, 3),
            "ground": rng.uniform(70, 160) + rng.uniform(-20, 20, 3), "horizon": rng.uniform(0.35, 0.7)}


def _background(rng: np.random.Generator, cam: dict, H: int, W: int) -> np.ndarray:
    """The camera's wall and ground with random clutter (windows, doors, signs, kerbs): uint8 (H, W, 3)."""
    img = Image.new("RGB", (W, H), _rgb(cam["wall"]))
    d = ImageDraw.Draw(img)
    d.rectangle([0, int(H * (cam["horizon"] + rng.uniform(-0.08, 0.08))), W, H], fill=_rgb(cam["ground"]))
    for _ in range(int(rng.integers(3, 9))):
        x0, y0 = rng.uniform(-0.2, 1.0) * W, rng.uniform(-0.1, 0.9) * H
        d.rectangle([x0, y0, x0 + rng.uniform(0.08, 0.6) * W, y0 + rng.uniform(0.04, 0.4) * H],
                    fill=_rgb(0.7 * cam["wall"] + 0.3 * rng.uniform(0, 255, 3)))
    for _ in range(int(rng.integers(0, 3))):
        y = rng.uniform(0.5, 1.0) * H
        d.line([(0, y), (W, y + rng.uniform(-0.1, 0.1) * H)], fill=_rgb(0.8 * cam["ground"]), width=2)
    return np.asarray(img)


def _camera_effects(rng: np.random.Generator, rgb: np.ndarray, cam: dict, g: dict) -> np.ndarray:
    """Light gradient, colour cast, blur and sensor noise of camera ``cam`` on ``rgb (H, W, 3)``: uint8."""
    H, W = rgb.shape[:2]
    shade = 1.08 - 0.16 * np.clip((np.arange(H) - g["top"]) / g["hp"], 0, 1)  # light from above
    gain = (shade[:, None, None] * cam["gain"] * rng.uniform(0.94, 1.06, 3)).astype(np.float32)  # colour cast
    rgb = np.clip(rgb * gain + np.float32(cam["bias"] + rng.uniform(-10, 10)), 0, 255).astype(np.uint8)
    blurred = cv2.GaussianBlur(rgb, (0, 0), cam["blur"] * rng.uniform(0.7, 1.3))
    uniform = rng.random((H, W, 3), dtype=np.float32) - 0.5  # sensor noise (uniform: 4x cheaper than normal)
    noisy = blurred + uniform * np.float32(cam["noise"] * 12 ** 0.5)  # std = cam["noise"]
    return np.clip(noisy, 0, 255).astype(np.uint8)


def _occluder_params(rng: np.random.Generator, kind: str, g: dict, H: int, W: int) -> dict:
    """Occluder position and colours; its size ``t`` is fitted afterwards."""
    x0, colour = rng.uniform(-0.6, 0.1) * W, _colour(rng, CLOTH)
    p = {"colour": np.array(colour, float), "x0": x0, "xc": g["cx"] + rng.uniform(-0.15, 0.15) * g["hp"],
         "x1": x0 + (rng.uniform(1.2, 2.0) if kind in ("car", "sign") else rng.uniform(0.9, 1.6)) * W}
    if kind in ("box", "pole"):  # wood, concrete, painted metal
        p["colour"] = MATERIALS[rng.integers(len(MATERIALS))].astype(float)
    if kind == "person":
        other = _random_outfit(rng)
        _, og = _pose(rng, other["build"], H, W)
        labels = _draw_person(og, other, H, W)
        p.update(rgb=_colourise(labels, other, og), alpha=labels > 0, dx0=g["cx"] - og["cx"],
                 side=float(rng.choice([-1.0, 1.0])))
    return p


def _occluder_shapes(kind: str, t: float, p: dict, H: int, W: int) -> List[Tuple[str, list, np.ndarray]]:
    """Occluder of size ``t`` in [0, 1] as ``(PIL draw method, xy, colour)``; the first two: outline."""
    c, x0, x1 = p["colour"], p["x0"], p["x1"]
    if kind == "car":  # seen from the side: cabin with windows over the body, a wheel at the bottom
        h, span = t * 0.8 * H, x1 - x0
        top, belt, wheel = H - h, H - 0.6 * h, x0 + 0.25 * span
        cab0, cab1 = x0 + 0.12 * span, x1 - 0.12 * span
        return [("rectangle", [cab0, top, cab1, belt + 2], c), ("rectangle", [x0, belt, x1, H + 1], c),
                ("rectangle", [cab0 + 3, top + 0.1 * h, cab1 - 3, belt], np.full(3, 50.0)),
                ("rectangle", [x0, belt + 0.3 * h, x1, belt + 0.3 * h + 1], 0.6 * c),
                ("ellipse", [wheel - 0.3 * h, H - 0.25 * h, wheel + 0.3 * h, H + 0.35 * h], np.zeros(3))]
    if kind == "box":  # a crate or bin standing on the ground
        top = H - t * 0.9 * H
        slats = [top + f * (H - top) for f in (0.33, 0.66)]
        return [("rectangle", [x0, top, x1, H + 1], c), ("rectangle", [x0, top, x1, top + 2], 1.3 * c)] + [
            ("rectangle", [x0, y, x1, y + 1], 0.6 * c) for y in slats]
    if kind == "pole":  # a pillar or tree trunk over the whole height
        w = max(1.0, t * 0.8 * W)
        return [("rectangle", [p["xc"] - w / 2, -1, p["xc"] + w / 2, H + 1], c),
                ("rectangle", [p["xc"] - w / 4, -1, p["xc"] - w / 8, H + 1], 1.25 * c)]
    bottom = t * 0.85 * H  # sign: a board hanging from the top
    return [("rectangle", [x0, -1, x1, bottom], c)] + [
        ("rectangle", [x0 + 6, (1 - f) * bottom, x1 - 6, (1 - f) * bottom + 2], 255 - c) for f in (0.2, 0.35)]


def _occluder_layer(kind: str, t: float, p: dict, H: int, W: int, colour: bool = True
                    ) -> Tuple[Optional[np.ndarray], np.ndarray]:
    """Render the occluder of size ``t``: ``(rgb (H, W, 3) uint8, or None without colour; alpha (H, W))``."""
    if kind == "person":  # another pedestrian in front, walking in from one side
        dx = int(round(p["dx0"] + p["side"] * (1 - t) * 0.8 * W))
        src, dst = slice(max(0, -dx), min(W, W - dx)), slice(max(0, dx), min(W, W + dx))
        rgb, alpha = np.zeros_like(p["rgb"]), np.zeros_like(p["alpha"])
        rgb[:, dst], alpha[:, dst] = p["rgb"][:, src], p["alpha"][:, src]
        return rgb, alpha
    rgb, mask = Image.new("RGB", (W, H)), Image.new("L", (W, H), 0)
    draw_rgb, draw_mask = ImageDraw.Draw(rgb), ImageDraw.Draw(mask)
    for i, (method, xy, fill) in enumerate(_occluder_shapes(kind, t, p, H, W)):
        if colour:
            getattr(draw_rgb, method)(xy, fill=_rgb(fill))
        if i < 2:
            getattr(draw_mask, method)(xy, fill=255)
    return np.asarray(rgb) if colour else None, np.asarray(mask) > 0


def _occlude(rng: np.random.Generator, body: np.ndarray, g: dict, H: int, W: int
             ) -> Tuple[str, np.ndarray, np.ndarray, float]:
    """Pick an occluder and bisect its size until it hides a random 25-55% of the body.

    Returns:
        ``(kind, rgb (H, W, 3), alpha (H, W) bool, coverage in [0.2, 0.6])``. If the drawn kind cannot reach
        the range, a full-width box from the ground (which grows row by row) is used instead.
    """
    target, kind = rng.uniform(0.25, 0.55), OCCLUDER_KINDS[int(rng.integers(len(OCCLUDER_KINDS)))]
    area = max(int(body.sum()), 1)
    for fallback, k in enumerate((kind, "box")):
        p = _occluder_params(rng, k, g, H, W)
        if fallback:
            p["x0"], p["x1"] = -1.0, W + 1.0
        lo, hi, best = 0.0, 1.0, (0.0, 0.0)
        for _ in range(14):
            t = (lo + hi) / 2
            cov = int((_occluder_layer(k, t, p, H, W, colour=False)[1] & body).sum()) / area
            best = (t, cov) if abs(cov - target) < abs(best[1] - target) else best
            lo, hi = (t, hi) if cov < target else (lo, t)
        if COVERAGE_RANGE[0] <= best[1] <= COVERAGE_RANGE[1]:
            return (k, *_occluder_layer(k, best[0], p, H, W), best[1])
    raise RuntimeError("could not fit an occluder")  # unreachable: the box reaches every coverage


def _confidence_fields(rng: np.random.Generator, kp: np.ndarray, g: dict, body: np.ndarray,
                       occ: np.ndarray, stride: int) -> np.ndarray:
    """PifPaf-style fields ``(36, H/stride, W/stride)`` float32 in [0, 1]: 17 keypoint blobs, 19 limb bands.

    Detector noise: keypoints jittered by 1.2% of the body height, per-field confidence 0.65-1.0, 6% of the
    fields dropped, face keypoints mostly missing from behind. Keypoints outside the image or under the
    occluder are not detected. The fields are multiplied by the visible silhouette (the Mask R-CNN
    filtering), so they are zero on background and on every cell that the occluder covers at least half of.
    """
    (H, W), s = body.shape, stride
    support = cell_support(body & ~occ, s) * (cell_coverage(occ, s) < 0.5)  # (h, w)
    xi, yi = np.round(kp).astype(int).T
    seen = (xi >= 0) & (xi < W) & (yi >= 0) & (yi < H)
    seen &= ~occ[np.clip(yi, 0, H - 1), np.clip(xi, 0, W - 1)]
    conf = rng.uniform(0.65, 1.0, 17) * seen * (rng.random(17) > 0.06)
    if g["view"] == "back":  # nose and eyes: detectors rarely fire on them from behind
        conf[:3] *= 0.3 * (rng.random(3) < 0.3)
    p = kp + rng.normal(0, 0.012 * g["hp"], kp.shape)  # (17, 2)
    limb_conf = rng.uniform(0.65, 1.0, 19) * seen[LIMB_ENDS].any(1) * (rng.random(19) > 0.06)
    fields = render_fields(p, conf, limb_conf, grid=support.shape, stride=s, sigmas=field_sigmas(g["hp"], s))
    fields = fields * support * rng.uniform(0.85, 1.0, (NUM_PIFPAF_FIELDS, *support.shape))
    return np.clip(fields, 0, 1).astype(np.float32)
