"""CLIP backbone: grid, positional-embedding resize, checkpoint formats, offline failure (CPU, no weights)."""
import time
import warnings

import open_clip.pretrained
import pytest
import torch
import torch.nn.functional as F
from open_clip.model import CLIP

from profd_plugin.config import get_default_config
from profd_plugin.modeling import build_profd_model, clip_backbone
from profd_plugin.modeling.clip_backbone import (
    TINY_CLIP_CONFIG,
    ClipVisualBackbone,
    convert_clip_state_dict,
    create_clip,
    grid_size_for,
    resize_pos_embed,
)


def _tiny_clip(seed: int = 0) -> CLIP:
    torch.manual_seed(seed)
    return CLIP(**TINY_CLIP_CONFIG, quick_gelu=True)


def _assert_same_weights(model: torch.nn.Module, reference: dict) -> None:
    state = model.state_dict()
    assert set(state) == set(reference)
    for key, value in reference.items():
        assert torch.equal(state[key], value.float()), key


@pytest.mark.parametrize("stride, grid", [(16, (16, 8)), (12, (21, 10))])
def test_grid_size(stride, grid):
    assert grid_size_for((256, 128), 16, stride) == grid


def test_resize_pos_embed_keeps_class_token_and_interpolates():
    pos = torch.randn(1 + 14 * 14, 8)
    out = resize_pos_embed(pos, (21, 10))
    assert out.shape == (1 + 21 * 10, 8)
    assert torch.equal(out[0], pos[0])
    ref = F.interpolate(pos[1:].reshape(1, 14, 14, 8).permute(0, 3, 1, 2), size=(21, 10), mode="bilinear",
                        align_corners=False).permute(0, 2, 3, 1).reshape(210, 8)
    assert torch.allclose(out[1:], ref)
    assert torch.equal(resize_pos_embed(pos, (14, 14)), pos)


def test_stride12_backbone_forward_shapes():
    backbone = ClipVisualBackbone(_tiny_clip().visual, image_size=(256, 128), stride=12)
    assert backbone.grid_size == (21, 10)
    width, dim = TINY_CLIP_CONFIG["vision_cfg"]["width"], TINY_CLIP_CONFIG["embed_dim"]
    assert backbone.visual.positional_embedding.shape == (1 + 210, width)
    cls, patches = backbone(torch.randn(2, 3, 256, 128))
    assert cls.shape == (2, dim) and patches.shape == (2, 210, dim)


def test_convert_clip_state_dict_formats():
    ref = {"visual.proj": torch.randn(4, 2).half(), "token_embedding.weight": torch.randn(3, 4)}
    openai = dict(ref, input_resolution=torch.tensor(224), context_length=torch.tensor(77),
                  vocab_size=torch.tensor(49408))
    out = convert_clip_state_dict(openai)
    assert set(out) == set(ref) and out["visual.proj"].dtype == torch.float32
    wrapped = {"state_dict": {"module.visual.proj": ref["visual.proj"], "module.text.token_embedding.weight":
                              ref["token_embedding.weight"]}}
    assert set(convert_clip_state_dict(wrapped)) == set(ref)


def test_load_openai_format_full_vit_b16(tmp_path):
    """A random full ViT-B/16 saved as an OpenAI (fp16 + metadata) state dict loads through the config."""
    torch.manual_seed(0)
    source = CLIP(**clip_backbone.clip_model_config("ViT-B-16"), quick_gelu=True)
    state = {k: v.half() if v.is_floating_point() else v for k, v in source.state_dict().items()}
    meta = dict(input_resolution=224, context_length=77, vocab_size=49408)
    state.update({k: torch.tensor(v) for k, v in meta.items()})
    path = tmp_path / "ViT-B-16.pt"
    torch.save(state, path)
    del source
    cfg = get_default_config()
    cfg.profd.clip.pretrained = str(path)
    model = build_profd_model(cfg, num_classes=3)
    visual = model.backbone.visual
    assert torch.equal(visual.conv1.weight, state["visual.conv1.weight"].float())
    assert torch.equal(visual.class_embedding, state["visual.class_embedding"].float())
    assert torch.equal(visual.positional_embedding[0], state["visual.positional_embedding"][0].float())
    block = "transformer.resblocks.11.mlp.c_fc.weight"
    assert torch.equal(model.prompt_learner.text_encoder.state_dict()[block], state[block].float())
    assert torch.equal(visual.state_dict()[block], state["visual." + block].float())


def test_load_openai_jit_archive(tmp_path):
    source = _tiny_clip().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        example = {"encode_image": (torch.ones(1, 3, 224, 224),)}
        traced = torch.jit.trace_module(source, example, check_trace=False)
        torch.jit.save(traced, str(tmp_path / "tiny_jit.pt"))
    _assert_same_weights(create_clip("tiny", str(tmp_path / "tiny_jit.pt")), source.state_dict())


def test_load_open_clip_formats(tmp_path):
    source = _tiny_clip()
    ref = source.state_dict()
    torch.save({"state_dict": {"module." + k: v for k, v in ref.items()}, "epoch": 3}, tmp_path / "ckpt.pt")
    _assert_same_weights(create_clip("tiny", str(tmp_path / "ckpt.pt")), ref)
    tower = ("visual.", "logit_scale")
    custom_text = {(k if k.startswith(tower) else "text." + k): v for k, v in ref.items()}
    torch.save(custom_text, tmp_path / "custom.pt")
    _assert_same_weights(create_clip("tiny", str(tmp_path / "custom.pt")), ref)


def test_missing_checkpoint_path_is_named(tmp_path):
    missing = str(tmp_path / "nope" / "ViT-B-16.pt")
    with pytest.raises(FileNotFoundError, match="nope"):
        create_clip("tiny", missing)


def test_openai_offline_fails_fast_with_instructions(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr(open_clip.pretrained, "download_pretrained", offline)
    monkeypatch.setattr(clip_backbone, "_cached_weights", lambda *a, **k: None)
    for reachable in (True, False):
        monkeypatch.setattr(clip_backbone, "_host_reachable", lambda host, r=reachable: r)
        start = time.monotonic()
        with pytest.raises(RuntimeError) as err:
            create_clip("ViT-B-16", "openai")
        assert time.monotonic() - start < 5.0
        message = str(err.value)
        assert "\n" not in message
        assert "OpenAI CLIP ViT-B-16 checkpoint" in message
        assert "profd.clip.pretrained /path/to/ViT-B-16.pt" in message
