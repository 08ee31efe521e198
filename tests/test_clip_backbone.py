"""CLIP backbone: loading through open_clip, position-embedding resampling, any input size (CPU, no weights).

The expected values are built by hand from the source model (its weights, the official bilinear
``F.interpolate`` and the official forward). The format, resize and built-size tests passed against the
hand-written loader and backbone before open_clip's factory and timm's resampling replaced them (and the
new code loads every format below bit-identically to the old); other input sizes are new (the old
backbone refused them) and are checked against explicitly constructed expectations.
"""
import copy
import time
import warnings
from dataclasses import fields
from typing import Dict, Tuple

import open_clip
import open_clip.pretrained
import pytest
import torch
import torch.nn.functional as F
from open_clip.model import CLIP
from open_clip.tokenizer import SimpleTokenizer
from open_clip.transformer import QuickGELU
from safetensors.torch import save_file
from torch import Tensor, nn

from profd_plugin.config import get_default_config
from profd_plugin.data.masks import part_names
from profd_plugin.errors import ConfigError, WeightsError
from profd_plugin.modeling import ProFD, build_profd_model, clip_backbone
from profd_plugin.modeling import visual as visual_module
from profd_plugin.modeling.clip_backbone import (
    TINY_CLIP_CONFIG,
    ClipVisualBackbone,
    create_clip,
    grid_size_for,
    resize_pos_embed,
)

#: the tiny config's values, written out: the JSON file registered with open_clip must keep them
TINY_VALUES = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 128, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
PATCH = 16
NATIVE_GRID = (14, 14)  # 224 / 16: the grid of the pretrained positional parameter
OPENAI_META = dict(input_resolution=224, context_length=77, vocab_size=49408)
PARTS = part_names("five_v")
TOKENIZER = SimpleTokenizer(context_length=77)


def _tiny_clip(seed: int = 0, quick_gelu: bool = True) -> CLIP:
    torch.manual_seed(seed)
    return CLIP(**TINY_VALUES, quick_gelu=quick_gelu)


def _assert_same_weights(model: nn.Module, reference: Dict[str, Tensor]) -> None:
    state = model.state_dict()
    assert set(state) == set(reference)
    for key, value in reference.items():
        assert state[key].dtype == torch.float32, key
        assert torch.equal(state[key], value.float()), key


def _assert_same_forward(model: CLIP, reference: CLIP) -> None:
    """Same image and text features: the architecture (heads, activation) is the reference's too."""
    model.eval(), reference.eval()
    images, text = torch.randn(2, 3, 224, 224), torch.randint(0, 49408, (2, 77))
    with torch.no_grad():
        assert torch.equal(model.encode_image(images), reference.encode_image(images))
        assert torch.equal(model.encode_text(text), reference.encode_text(text))


def _fp16_reference(source: CLIP) -> CLIP:
    """The source with its weights rounded through fp16, as an OpenAI release stores them."""
    reference = copy.deepcopy(source)
    reference.load_state_dict({k: v.half().float() for k, v in source.state_dict().items()})
    return reference


def _bilinear(pos: Tensor, old: Tuple[int, int], new: Tuple[int, int]) -> Tensor:
    """The official resize (``clip/model.py:516-532``): class token kept, grid bilinear, align_corners off."""
    grid = pos[1:].reshape(1, *old, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=new, mode="bilinear", align_corners=False)
    return torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(new[0] * new[1], -1)])


def _official_forward(visual: nn.Module, images: Tensor, pos: Tensor) -> Tuple[Tensor, Tensor]:
    """Class and patch tokens of the official forward (``ln_post`` and ``proj`` on all tokens)."""
    x = visual.conv1(images).flatten(2).transpose(1, 2)
    x = torch.cat([visual.class_embedding.expand(x.shape[0], 1, -1), x], dim=1) + pos
    x = visual.ln_post(visual.transformer(visual.ln_pre(x))) @ visual.proj
    return x[:, 0], x[:, 1:]


def _images(size: Tuple[int, int], n: int = 2, seed: int = 3) -> Tensor:
    return torch.randn(n, 3, *size, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------- geometry
@pytest.mark.parametrize("stride, grid", [(16, (16, 8)), (12, (21, 10))])
def test_grid_size(stride, grid):
    assert grid_size_for((256, 128), PATCH, stride) == grid


@pytest.mark.parametrize("grid", [(16, 8), (21, 10), (8, 4)])
def test_resize_pos_embed_is_the_official_bilinear_resize(grid):
    pos = torch.randn(1 + 14 * 14, 8)
    out = resize_pos_embed(pos, grid)
    assert torch.equal(out, _bilinear(pos, NATIVE_GRID, grid))  # bit-identical to the official resize
    assert torch.equal(resize_pos_embed(pos, NATIVE_GRID), pos)
    assert resize_pos_embed(pos, NATIVE_GRID).data_ptr() != pos.data_ptr()  # a copy the caller owns


def test_resize_pos_embed_from_a_non_square_grid():
    pos = torch.randn(1 + 8 * 4, 8)
    assert torch.equal(resize_pos_embed(pos, (16, 8), old_size=(8, 4)), _bilinear(pos, (8, 4), (16, 8)))
    with pytest.raises(ValueError, match="square"):
        resize_pos_embed(pos, (16, 8))  # 32 tokens: the old grid must be given
    tall = torch.randn(1 + 16 * 4, 8)  # as many tokens as the square target: still resampled
    assert torch.equal(resize_pos_embed(tall, (8, 8), old_size=(16, 4)), _bilinear(tall, (16, 4), (8, 8)))


def test_resize_pos_embed_refuses_a_timm_that_skips_equal_token_counts(monkeypatch):
    """Older timm returned its input when the token count was unchanged and the target square."""
    monkeypatch.setattr(visual_module, "resample_abs_pos_embed", lambda posemb, **kwargs: posemb)
    with pytest.raises(RuntimeError, match="upgrade timm"):
        resize_pos_embed(torch.randn(1 + 16 * 4, 8), (8, 8), old_size=(16, 4))


# ---------------------------------------------------------------------------------------------- creation
def test_tiny_config_registered_with_open_clip():
    assert TINY_CLIP_CONFIG == TINY_VALUES
    create_clip("tiny")
    assert open_clip.get_model_config("tiny") == TINY_VALUES


@pytest.mark.parametrize("quick_gelu", [True, False])
def test_random_init_is_plain_clip(quick_gelu):
    torch.manual_seed(0)
    model = create_clip("tiny", "none", quick_gelu=quick_gelu)
    reference = _tiny_clip(0, quick_gelu)
    _assert_same_weights(model, reference.state_dict())  # same random draws as CLIP(**config)
    activation = model.visual.transformer.resblocks[0].mlp.gelu
    assert isinstance(activation, QuickGELU) == quick_gelu
    assert model.visual.transformer.resblocks[0].attn.num_heads == 4  # width 128 / head_width 32
    _assert_same_forward(model, reference)


def test_unknown_or_unsupported_model_names():
    with pytest.raises(ConfigError, match="no-such-model"):
        create_clip("no-such-model")
    with pytest.raises(ConfigError, match="ViT or ResNet"):
        create_clip("convnext_base")  # a timm tower


# ---------------------------------------------------------------------------------------------- formats
def test_load_openai_format_full_vit_b16(tmp_path):
    """A random full ViT-B/16 saved as an OpenAI (fp16 + metadata) state dict loads through the config."""
    torch.manual_seed(0)
    source = CLIP(**open_clip.get_model_config("ViT-B-16"), quick_gelu=True)
    state = {k: v.half() if v.is_floating_point() else v for k, v in source.state_dict().items()}
    state.update({k: torch.tensor(v) for k, v in OPENAI_META.items()})
    path = tmp_path / "ViT-B-16.pt"
    torch.save(state, path)
    del source
    cfg = get_default_config()
    cfg.profd.clip.pretrained = str(path)
    model = build_profd_model(cfg, num_classes=3)
    visual = model.backbone.visual
    assert torch.equal(visual.conv1.weight, state["visual.conv1.weight"].float())
    assert torch.equal(visual.class_embedding, state["visual.class_embedding"].float())
    native_pos = state["visual.positional_embedding"].float()
    assert torch.equal(visual.positional_embedding, _bilinear(native_pos, NATIVE_GRID, (16, 8)))
    block = "transformer.resblocks.11.mlp.c_fc.weight"
    assert torch.equal(model.prompt_learner.text_encoder.state_dict()[block], state[block].float())
    assert torch.equal(visual.state_dict()[block], state["visual." + block].float())


def test_load_openai_state_dict_tiny(tmp_path):
    """fp16 + metadata: weights cast to fp32, heads from our config (open_clip would infer width // 64)."""
    source = _tiny_clip()
    state = {k: v.half() for k, v in source.state_dict().items()}
    torch.save(dict(state, **{k: torch.tensor(v) for k, v in OPENAI_META.items()}), tmp_path / "openai.pt")
    model = create_clip("tiny", str(tmp_path / "openai.pt"))
    _assert_same_weights(model, state)
    _assert_same_forward(model, _fp16_reference(source))


def _openai_like(model: CLIP) -> CLIP:
    """OpenAI's archive layout: metadata tensors, no causal-mask buffer (a plain attribute there)."""
    del model._buffers["attn_mask"]  # encode_image (the traced method) does not use it
    for key, value in OPENAI_META.items():
        model.__dict__.pop(key, None)  # int attributes in open_clip, tensors in OpenAI's archives
        model.register_buffer(key, torch.tensor(value))
    return model


@pytest.mark.parametrize("release", [False, True])
def test_load_jit_archive(tmp_path, release):
    """TorchScript archives: OpenAI releases (fp16, metadata) and open_clip-traced ones (fp32, attn_mask)."""
    source = _tiny_clip().eval()
    traced_model = _openai_like(copy.deepcopy(source)) if release else source
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace_module(traced_model, {"encode_image": (torch.ones(1, 3, 224, 224),)},
                                        check_trace=False)
        if release:
            traced.half()
        torch.jit.save(traced, str(tmp_path / "tiny_jit.pt"))  # deprecated (FutureWarning), still the format
    model = create_clip("tiny", str(tmp_path / "tiny_jit.pt"))
    reference = _fp16_reference(source) if release else source
    _assert_same_weights(model, reference.state_dict())
    _assert_same_forward(model, reference)


def test_load_open_clip_formats(tmp_path):
    source = _tiny_clip()
    ref = source.state_dict()
    torch.save({"state_dict": {"module." + k: v for k, v in ref.items()}, "epoch": 3}, tmp_path / "ckpt.pt")
    _assert_same_weights(create_clip("tiny", str(tmp_path / "ckpt.pt")), ref)
    tower = ("visual.", "logit_scale")
    custom_text = {(k if k.startswith(tower) else "text." + k): v for k, v in ref.items()}
    torch.save(custom_text, tmp_path / "custom.pt")
    _assert_same_weights(create_clip("tiny", str(tmp_path / "custom.pt")), ref)
    save_file({k: v.contiguous() for k, v in ref.items()}, str(tmp_path / "open_clip_model.safetensors"))
    model = create_clip("tiny", str(tmp_path / "open_clip_model.safetensors"))
    _assert_same_weights(model, ref)
    _assert_same_forward(model, source)


def test_checkpoint_of_another_model_is_one_line(tmp_path):
    torch.save(CLIP(**dict(TINY_VALUES, embed_dim=64)).state_dict(), tmp_path / "other.pt")
    with pytest.raises(RuntimeError) as err:
        create_clip("tiny", str(tmp_path / "other.pt"))
    message = str(err.value)
    assert "\n" not in message and "other.pt" in message and "tiny" in message and "shape" in message
    partial = {k: v for k, v in _tiny_clip().state_dict().items() if k != "visual.proj"}
    torch.save(partial, tmp_path / "partial.pt")
    with pytest.raises(WeightsError, match="visual.proj") as err:
        create_clip("tiny", str(tmp_path / "partial.pt"))
    assert "\n" not in str(err.value)


def test_missing_checkpoint_path_is_named(tmp_path):
    missing = str(tmp_path / "nope" / "ViT-B-16.pt")
    with pytest.raises(WeightsError, match="nope") as err:
        create_clip("tiny", missing)
    assert str(err.value).endswith("(use a path or none: it has no released weights)")  # no 'openai' for tiny


def test_missing_checkpoint_lists_the_models_own_tags():
    with pytest.raises(WeightsError) as err:
        create_clip("RN50", "openaii")
    message = str(err.value)
    assert "'openaii'" in message
    assert message.endswith("(use one of its tags (openai, yfcc15m, cc12m), a path or none)")


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


# ---------------------------------------------------------------------------------------------- any size
def _backbone(image_size: Tuple[int, int], stride: int = 16, seed: int = 0) -> ClipVisualBackbone:
    return ClipVisualBackbone(_tiny_clip(seed).visual, image_size=image_size, stride=stride)


@pytest.mark.parametrize("image_size, stride", [((256, 128), 16), ((256, 128), 12), ((128, 64), 16)])
def test_forward_at_the_built_size_is_the_official_one(image_size, stride):
    native = _tiny_clip().visual.positional_embedding.detach()
    backbone = _backbone(image_size, stride)
    grid = grid_size_for(image_size, PATCH, stride)
    pos = backbone.visual.positional_embedding
    assert backbone.grid_size == grid and torch.equal(pos, _bilinear(native, NATIVE_GRID, grid))
    images = _images(image_size)
    with torch.no_grad():
        cls, patches = backbone(images)
        ref_cls, ref_patches = _official_forward(backbone.visual, images, pos)
    assert patches.shape == (2, grid[0] * grid[1], TINY_VALUES["embed_dim"])
    assert torch.equal(cls, ref_cls) and torch.equal(patches, ref_patches)


@pytest.mark.parametrize("image_size, stride", [((256, 128), 16), ((256, 128), 12), ((128, 64), 16)])
def test_native_backbone_at_any_size_equals_one_built_at_that_size(image_size, stride):
    """Built where the stored grid is CLIP's own 14x14 (224x224 at s=16, 172x172 at s=12): resampling to
    the input's grid is the build-time resize, so this equals a backbone built at the input size."""
    side = PATCH + (NATIVE_GRID[0] - 1) * stride
    native = _backbone((side, side), stride).eval()
    assert native.grid_size == NATIVE_GRID
    built = _backbone(image_size, stride).eval()
    images = _images(image_size)
    with torch.no_grad():
        for got, expected in zip(native(images), built(images)):
            assert torch.equal(got, expected)
    assert native.grid_size == NATIVE_GRID  # the parameter is not re-gridded


def test_trained_grid_is_resampled_to_the_input():
    """Built at 128x64: at 256x128 its trained 8x4 grid (not CLIP's 14x14) is resampled to 16x8."""
    backbone = _backbone((128, 64)).eval()
    with torch.no_grad():
        backbone.visual.positional_embedding.add_(torch.randn_like(backbone.visual.positional_embedding))
    trained = backbone.visual.positional_embedding.detach().clone()
    images = _images((256, 128))
    with torch.no_grad():
        cls, patches = backbone(images)
        ref_cls, ref_patches = _official_forward(backbone.visual, images, _bilinear(trained, (8, 4), (16, 8)))
    assert patches.shape == (2, 16 * 8, TINY_VALUES["embed_dim"])
    assert torch.equal(cls, ref_cls) and torch.equal(patches, ref_patches)
    assert torch.equal(backbone.visual.positional_embedding, trained)  # the parameter is untouched


def test_resampled_grid_cached_until_the_parameter_changes():
    backbone = _backbone((128, 64)).eval()
    pos = backbone.visual.positional_embedding
    with torch.no_grad():
        first = backbone.positional_embedding_for((16, 8))
        assert backbone.positional_embedding_for((16, 8)) is first  # cached
        assert backbone.positional_embedding_for((8, 4)) is pos  # built grid: the parameter itself
        pos.add_(1.0)  # optimizer step
        second = backbone.positional_embedding_for((16, 8))
        assert second is not first and torch.equal(second, _bilinear(pos, (8, 4), (16, 8)))
        backbone.load_state_dict(_backbone((128, 64), seed=1).state_dict())
        third = backbone.positional_embedding_for((16, 8))
        assert torch.equal(third, _bilinear(pos, (8, 4), (16, 8))) and not torch.equal(third, second)
    backbone.train()
    trained = backbone.positional_embedding_for((16, 8))  # training: recomputed, differentiable
    assert trained.requires_grad and trained is not backbone.positional_embedding_for((16, 8))
    trained.sum().backward()
    assert pos.grad is not None and pos.grad.abs().sum() > 0


def test_input_smaller_than_a_patch():
    with pytest.raises(ValueError, match="patch size"):
        _backbone((128, 64))(torch.zeros(1, 3, 8, 64))


def test_set_image_size_then_load_a_checkpoint_trained_at_another_size():
    trained = _backbone((256, 128)).eval()
    with torch.no_grad():
        trained.visual.positional_embedding.add_(torch.randn_like(trained.visual.positional_embedding))
    state = trained.state_dict()
    loader = _backbone((128, 64), seed=5).eval()
    with pytest.raises(RuntimeError, match="positional_embedding"):
        loader.load_state_dict(state)
    loader.set_image_size((256, 128))
    assert loader.image_size == (256, 128) and loader.grid_size == (16, 8)
    loader.load_state_dict(state)
    for size in ((256, 128), (128, 64)):
        images = _images(size)
        with torch.no_grad():
            for got, expected in zip(loader(images), trained(images)):
                assert torch.equal(got, expected)
    pos = loader.visual.positional_embedding.detach().clone()
    loader.set_image_size((128, 64))  # re-grids the parameter itself with the same rule
    assert torch.equal(loader.visual.positional_embedding, _bilinear(pos, (16, 8), (8, 4)))
    assert loader.visual.positional_embedding.requires_grad


# ---------------------------------------------------------------------------------------------- ProFD
def _profd(attention: str = "hybrid", image_size: Tuple[int, int] = (128, 64)) -> ProFD:
    torch.manual_seed(0)
    return ProFD(create_clip("tiny"), 4, part_names=PARTS, image_size=image_size, attention=attention,
                 tokenizer=TOKENIZER)


def _fields(embeddings) -> list:
    return [getattr(embeddings, field.name) for field in fields(embeddings)]


@pytest.mark.parametrize("attention", ["hybrid", "none"])
def test_profd_evaluates_at_another_input_size(attention):
    """Eval at 256x128 of a model built at 128x64 = the same model re-gridded to 256x128 (16x8 patches)."""
    model = _profd(attention).eval()
    regridded = copy.deepcopy(model)
    regridded.backbone.set_image_size((256, 128))
    assert model.grid_size == (8, 4) and regridded.grid_size == (16, 8)
    images = _images((256, 128), n=3)
    masks = torch.softmax(torch.randn(3, len(PARTS) + 1, 64, 32), dim=1)
    with torch.no_grad():
        got, expected = model(images, return_attention=True), regridded(images, return_attention=True)
        pooled, pooled_expected = model.pooled_part_features(images, masks), \
            regridded.pooled_part_features(images, masks)
    for value, reference in zip(_fields(got) + list(pooled), _fields(expected) + list(pooled_expected)):
        assert (value is None and reference is None) or torch.equal(value, reference)
    assert got.part_feats.shape == (3, len(PARTS), TINY_VALUES["embed_dim"])
    if attention == "hybrid":
        assert got.attention.shape == (3, len(PARTS) + 2, 16 * 8)
    else:  # pooling weights from the masks' patch labels on the input's grid
        with torch.no_grad():
            assert torch.equal(model(images, masks).part_feats, regridded(images, masks).part_feats)
    with pytest.raises(ValueError, match="built"):
        model.train()(images, masks)
