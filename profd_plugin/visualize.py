"""Pictures of a trained ProFD (PNG): ranked lists with per-part visibility and distances, and part attention.

* :func:`draw_ranked_list` / :func:`save_ranked_lists`: a query and its top-k gallery images (green border:
  same identity, red: another, grey: unknown), under each image one row per feature: the global distance,
  then per part a bar of the image's visibility and the part distance d_k to the query (``-`` where the
  part is not compared, w_k = v^q_k v^g_k = 0). ``test.visrank True`` writes these for ProFD models.
* :func:`draw_part_attention` / :func:`save_part_attention`: for each part the spatial-aware attention
  map of its decoder query (paper Eq. 8) and its alignment map (the per-patch part probability from Eq. 5,
  its maximum printed in the corner) over the image, each scaled to its own range, as the paper's Fig. 5;
  the first column shows the image and the alignment argmax (background unpainted).

Sizes are fixed by the constants below (:func:`ranked_list_size`, :func:`attention_size`); images are shown
at ``TILE_H x TILE_W`` whatever their size. Drawing uses PIL (text, shapes) and OpenCV (colour map).
"""
from __future__ import annotations

import os
import os.path as osp
from typing import Any, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .fileio import atomic_write
from .metrics import visibility_aware_distance

__all__ = ["draw_ranked_list", "save_ranked_lists", "draw_part_attention", "save_part_attention",
           "ranked_list_size", "attention_size", "as_pil", "TILE_H", "TILE_W"]

TILE_H, TILE_W = 256, 128  # every image is shown at this size (person crops are about 2:1)
MARGIN, GAP, QUERY_GAP = 8, 6, 20  # outer margin, gap between tiles, extra gap after the query
LABEL_W = 112  # left column with the row names
HEADER_H = 16  # text line above the tiles
ROW_H = 15  # one feature row (global distance, or a part's visibility bar and distance)
ROWS_TOP = 4  # space between a tile and its rows
BORDER = 4  # match border width
BAR_W = 60  # visibility bar length at visibility 1
FONT_SIZE = 11
HEAT_ALPHA = 0.55  # weight of the colour map over the image
GREEN, RED, GREY, BLACK = (0, 170, 0), (220, 0, 0), (150, 150, 150), (0, 0, 0)
WHITE, BAR_BG, BAR_FG, TEXT_DIM = (255, 255, 255), (225, 225, 225), (60, 120, 220), (160, 160, 160)
_NORM_EPS = 1e-12
# distinct colours of the alignment argmax (parts 1..K; background unpainted)
_PART_COLOURS = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
                 (145, 30, 180), (70, 240, 240), (240, 50, 230)]


def _font() -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=FONT_SIZE)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def as_pil(image: Any) -> Image.Image:
    """An input of :func:`profd_plugin.inference.to_image` (path, PIL, array, tensor) as an RGB PIL image."""
    from .inference import to_image

    img = to_image(image).as_subclass(torch.Tensor)  # (3, h, w) uint8 or float in [0, 1]
    if img.is_floating_point():
        img = (img * 255).round().to(torch.uint8)
    return Image.fromarray(img.permute(1, 2, 0).numpy())


def _tile(image: Any, border: Optional[Tuple[int, int, int]]) -> Image.Image:
    tile = as_pil(image).resize((TILE_W, TILE_H), Image.BILINEAR)
    if border is not None:
        ImageDraw.Draw(tile).rectangle([0, 0, TILE_W - 1, TILE_H - 1], outline=border, width=BORDER)
    return tile


def ranked_list_size(topk: int, num_parts: int) -> Tuple[int, int]:
    """(width, height) in pixels of a ranked-list picture with ``topk`` gallery images and K parts."""
    width = 2 * MARGIN + LABEL_W + (topk + 1) * TILE_W + topk * GAP + QUERY_GAP
    height = 2 * MARGIN + HEADER_H + TILE_H + ROWS_TOP + (num_parts + 1) * ROW_H
    return width, height


def _bar(draw: ImageDraw.ImageDraw, x: int, y: int, value: float) -> None:
    draw.rectangle([x, y + 3, x + BAR_W, y + ROW_H - 3], fill=BAR_BG)
    if value > 0:
        draw.rectangle([x, y + 3, x + round(BAR_W * min(value, 1.0)), y + ROW_H - 3], fill=BAR_FG)


def draw_ranked_list(query_image: Any, gallery_images: Sequence[Any], *, part_names: Sequence[str],
                     query_visibility: Sequence[float], gallery_visibility: Sequence[Sequence[float]],
                     distances: Sequence[float], global_distances: Sequence[float],
                     part_distances: Sequence[Sequence[float]], matches: Sequence[Optional[bool]]
                     ) -> Image.Image:
    """One query and its ranked gallery images (see the module docstring).

    Args:
        query_image, gallery_images: anything :func:`as_pil` takes; k gallery images, nearest first.
        part_names: the K part names.
        query_visibility: (K,) the query's visibility; gallery_visibility: (k, K).
        distances: (k,) the ranking distance; global_distances: (k,) d_0;
            part_distances: (k, K) d_k, NaN where the part is not compared.
        matches: (k,) True (same identity), False (another) or None (unknown).

    Returns:
        An RGB image of :func:`ranked_list_size`.
    """
    topk, num_parts = len(gallery_images), len(part_names)
    canvas = Image.new("RGB", ranked_list_size(topk, num_parts), WHITE)
    draw, font = ImageDraw.Draw(canvas), _font()
    top, rows_y = MARGIN + HEADER_H, MARGIN + HEADER_H + TILE_H + ROWS_TOP
    legend = "bar: visibility\nd: distance to query"
    draw.text((MARGIN, top + TILE_H - 2 * ROW_H), legend, fill=BLACK, font=font)
    for r, name in enumerate(["global", *part_names]):
        draw.text((MARGIN, rows_y + r * ROW_H), name, fill=BLACK, font=font)
    x = MARGIN + LABEL_W
    canvas.paste(_tile(query_image, BLACK), (x, top))
    draw.text((x, MARGIN), "query", fill=BLACK, font=font)
    for k in range(num_parts):
        y = rows_y + (k + 1) * ROW_H
        _bar(draw, x, y, float(query_visibility[k]))
        draw.text((x + BAR_W + 4, y), f"{float(query_visibility[k]):.2f}", fill=BLACK, font=font)
    x += TILE_W + QUERY_GAP
    for i, image in enumerate(gallery_images):
        colour = GREY if matches[i] is None else GREEN if matches[i] else RED
        canvas.paste(_tile(image, colour), (x, top))
        draw.text((x, MARGIN), f"{i + 1}: {float(distances[i]):.3f}", fill=BLACK, font=font)
        draw.text((x, rows_y), f"d {float(global_distances[i]):.3f}", fill=BLACK, font=font)
        for k in range(num_parts):
            y, d = rows_y + (k + 1) * ROW_H, float(part_distances[i][k])
            _bar(draw, x, y, float(gallery_visibility[i][k]))
            compared = not np.isnan(d)
            text, colour = (f"d {d:.2f}", BLACK) if compared else ("-", TEXT_DIM)
            draw.text((x + BAR_W + 4, y), text, fill=colour, font=font)
        x += TILE_W + GAP
    return canvas


def _feature_distances(q: Any, g: Any, qi: int, rows: Sequence[int], metric: str
                       ) -> Tuple[np.ndarray, np.ndarray]:
    """d_0 (k,) and d_k (k, K) between query ``qi`` and gallery ``rows``; NaN where w_k = v^q_k v^g_k = 0."""
    rows = torch.as_tensor(list(rows), dtype=torch.long)
    qg, qp = q.global_feat[qi:qi + 1], q.part_feats[qi:qi + 1]
    gg, gp = g.global_feat[rows], g.part_feats[rows]
    qv, gv = q.visibility[qi:qi + 1], g.visibility[rows]

    def single(a, b):  # one feature per image: mode "global" of the shared distance
        return visibility_aware_distance(a, qp, qv, b, gp, gv, metric=metric, mode="global")[0]

    d0 = single(qg, gg)  # (k,)
    parts = torch.stack([single(qp[:, k], gp[:, k]) for k in range(qp.shape[1])], 1)  # (k, K)
    parts[(qv * gv) == 0] = float("nan")
    return d0.numpy(), parts.numpy()


def _label(items: Sequence[Any], i: int) -> Tuple[Any, Optional[int], Optional[int]]:
    item = items[i]
    return (item[0], item[1], item[2]) if isinstance(item, (tuple, list)) else (item, None, None)


def _png(image: Image.Image, path: str) -> str:
    atomic_write(path, lambda f: image.save(f, format="PNG"))
    return path


def _name(index: int, source: Any) -> str:
    stem = osp.splitext(osp.basename(source))[0] if isinstance(source, (str, os.PathLike)) else "image"
    return f"{index:04d}_{stem}.png"


def save_ranked_lists(out_dir: str, query_items: Sequence[Any], gallery_items: Sequence[Any], distmat: Any,
                      query_feats: Any, gallery_feats: Any, *, topk: int, part_names: Sequence[str],
                      metric: str = "euclidean") -> List[str]:
    """Write one ranked-list PNG per query into ``out_dir`` (``<query index>_<file stem>.png``).

    As torchreid's ``visualize_ranked_results``, gallery images of the query's identity seen by the same
    camera are not shown (the protocol removes them); without labels every image is shown with a grey border.

    Args:
        query_items, gallery_items: ``(path, pid, camid, ...)`` tuples, or images (unlabelled).
        distmat: (Nq, Ng) ranking distances (array or tensor).
        query_feats, gallery_feats: features with ``global_feat``, ``part_feats``, ``visibility``.
        topk: gallery images per query.
        part_names, metric: the model's parts and ``profd.test.metric`` (for the per-feature distances).

    Returns:
        The written paths.
    """
    distmat = distmat.numpy() if torch.is_tensor(distmat) else np.asarray(distmat)
    order = np.argsort(distmat, axis=1, kind="stable")
    paths = []
    for qi in range(len(query_items)):
        q_img, q_pid, q_cam = _label(query_items, qi)
        rows = []
        for gi in order[qi]:
            _, g_pid, g_cam = _label(gallery_items, gi)
            if q_pid is not None and g_pid == q_pid and g_cam == q_cam:
                continue
            rows.append(int(gi))
            if len(rows) == topk:
                break
        d0, dk = _feature_distances(query_feats, gallery_feats, qi, rows, metric)
        labels = [_label(gallery_items, gi) for gi in rows]
        picture = draw_ranked_list(
            q_img, [lab[0] for lab in labels], part_names=part_names,
            query_visibility=query_feats.visibility[qi], gallery_visibility=gallery_feats.visibility[rows],
            distances=distmat[qi, rows], global_distances=d0, part_distances=dk,
            matches=[None if q_pid is None else lab[1] == q_pid for lab in labels])
        paths.append(_png(picture, osp.join(out_dir, _name(qi, q_img))))
    return paths


def attention_size(num_parts: int) -> Tuple[int, int]:
    """(width, height) in pixels of a part-attention picture with K parts."""
    return (2 * MARGIN + LABEL_W + (num_parts + 1) * TILE_W + num_parts * GAP,
            2 * MARGIN + HEADER_H + 2 * TILE_H + GAP)


def _heat(tile: np.ndarray, heat: np.ndarray) -> Image.Image:
    """``tile`` (TILE_H, TILE_W, 3) uint8 under a jet colour map of ``heat`` (h, w) scaled to its range."""
    heat = (heat - heat.min()) / max(float(heat.max() - heat.min()), _NORM_EPS)
    up = cv2.resize(heat.astype(np.float32), (TILE_W, TILE_H), interpolation=cv2.INTER_LINEAR)
    colours = cv2.applyColorMap(np.clip(up * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    return Image.fromarray(((1 - HEAT_ALPHA) * tile + HEAT_ALPHA * colours).astype(np.uint8))


def _segmentation(tile: np.ndarray, alignment: np.ndarray) -> Image.Image:
    """The image with each patch painted by its most probable part (background: unpainted)."""
    probs = np.concatenate([1 - alignment.sum(0, keepdims=True), alignment])  # (K+1, h, w), background first
    up = np.stack([cv2.resize(p.astype(np.float32), (TILE_W, TILE_H), interpolation=cv2.INTER_LINEAR)
                   for p in probs])
    label = up.argmax(0)
    out = tile.astype(np.float32).copy()
    for k in range(1, probs.shape[0]):
        colour = np.array(_PART_COLOURS[(k - 1) % len(_PART_COLOURS)], dtype=np.float32)
        out[label == k] = (1 - HEAT_ALPHA) * out[label == k] + HEAT_ALPHA * colour
    return Image.fromarray(out.astype(np.uint8))


def draw_part_attention(image: Any, *, part_names: Sequence[str], alignment: Any,
                        spa: Optional[Any] = None) -> Image.Image:
    """The paper's Fig. 5 for one image: per part its SPA map (row 1) and alignment map (row 2).

    Args:
        image: anything :func:`as_pil` takes.
        part_names: the K part names.
        alignment: (K, h, w) part probabilities (``ProFDFeatures.alignment_maps[i]``).
        spa: (K, h, w) SPA maps (``ProFDFeatures.spa_maps[i]``), or None (decoder without SPA branch).

    Returns:
        An RGB image of :func:`attention_size`.
    """
    num_parts = len(part_names)
    canvas = Image.new("RGB", attention_size(num_parts), WHITE)
    draw, font = ImageDraw.Draw(canvas), _font()
    tile = np.asarray(_tile(image, None))
    rows = (MARGIN + HEADER_H, MARGIN + HEADER_H + TILE_H + GAP)
    alignment = np.asarray(alignment, dtype=np.float32)
    draw.text((MARGIN, rows[0]), "spatial-aware\nattention (SPA)", fill=BLACK, font=font)
    draw.text((MARGIN, rows[1]), "alignment map\n(part probability)", fill=BLACK, font=font)
    x = MARGIN + LABEL_W
    draw.text((x, MARGIN), "image", fill=BLACK, font=font)
    canvas.paste(Image.fromarray(tile), (x, rows[0]))
    canvas.paste(_segmentation(tile, alignment), (x, rows[1]))
    for k, name in enumerate(part_names):
        x = MARGIN + LABEL_W + (k + 1) * (TILE_W + GAP)
        draw.text((x, MARGIN), name, fill=BLACK, font=font)
        if spa is not None:
            canvas.paste(_heat(tile, np.asarray(spa[k], dtype=np.float32)), (x, rows[0]))
        else:
            draw.rectangle([x, rows[0], x + TILE_W - 1, rows[0] + TILE_H - 1], fill=BAR_BG)
            draw.text((x + 4, rows[0] + 4), "no SPA branch", fill=BLACK, font=font)
        canvas.paste(_heat(tile, alignment[k]), (x, rows[1]))
        peak = f"max p {float(alignment[k].max()):.2f}"  # the scale of the map: its own range
        draw.rectangle([x + 1, rows[1] + 1, x + 1 + TILE_W // 2 + 4, rows[1] + ROW_H], fill=WHITE)
        draw.text((x + 3, rows[1] + 1), peak, fill=BLACK, font=font)
    return canvas


def save_part_attention(out_dir: str, images: Sequence[Any], feats: Any, *, part_names: Sequence[str]
                        ) -> List[str]:
    """Write one part-attention PNG per image (``<index>_<file stem>.png``); ``feats`` from
    ``ProFDExtractor.extract(images, attention=True)``."""
    if feats.alignment_maps is None:
        raise ValueError("save_part_attention needs features extracted with attention=True")
    paths = []
    for i, image in enumerate(images):
        spa = None if feats.spa_maps is None else feats.spa_maps[i].numpy()
        picture = draw_part_attention(image, part_names=part_names, alignment=feats.alignment_maps[i].numpy(),
                                      spa=spa)
        paths.append(_png(picture, osp.join(out_dir, _name(i, image))))
    return paths
