"""torchreid's own workflows: the model names profd / profd_s12 / profd_tiny, and FeatureExtractor with any
checkpoint the plugin writes (the trained model's features, or one line); torchreid's models unchanged."""
import io
import os
from contextlib import redirect_stdout

import pytest
import torch
from conftest import make_profd_checkpoint
from test_inference import EVAL_BATCH, extractor, query_paths  # noqa: F401  (module fixtures)

from profd_plugin import host
from profd_plugin.errors import CheckpointError
from profd_plugin.inference import to_image
from profd_plugin.modeling import clip_backbone

FE_KW = dict(pixel_mean=[0.5] * 3, pixel_std=[0.5] * 3, device="cpu", verbose=False)


def _feature_extractor(name, path, size=(64, 32), **kw):
    from torchreid.reid.utils import FeatureExtractor

    return FeatureExtractor(model_name=name, model_path=path, image_size=size, **{**FE_KW, **kw})


def test_variants_are_registered_the_torchreid_way():
    from torchreid.reid import models

    factories = getattr(models, "__model_factory")
    for name in ("profd", "profd_s12", "profd_tiny", "profd_tiny_vit"):
        assert name in factories
    for name, clip, stride in (("profd_tiny", "tiny_rn10", 32), ("profd_tiny_vit", "tiny", 16)):  # CPU demos
        model = models.build_model(name, 3, loss="triplet", pretrained=False)
        cfg = model.build_config
        assert (cfg.profd.clip.name, cfg.profd.clip.stride, (cfg.data.height, cfg.data.width)) == \
            (clip, stride, (128, 64))
        with pytest.raises(ValueError, match=f"tiny CLIP '{clip}' .* has no pretrained weights"):
            models.build_model(name, 3)


def test_vit_variants_build_without_downloads_and_take_any_size(monkeypatch):
    from torchreid.reid import models

    def offline(*a, **k):
        raise AssertionError("pretrained=False must not fetch weights")

    monkeypatch.setattr(clip_backbone, "_fetch_pretrained", offline)
    for name, stride, grid in (("profd", 16, (16, 8)), ("profd_s12", 12, (21, 10))):
        model = models.build_model(name, 2, pretrained=False).eval()
        backbone = model.backbone
        assert (backbone.stride, backbone.grid_size, backbone.embed_dim) == (stride, grid, 512)
        assert backbone.visual.transformer.width == 768  # ViT-B/16
        with torch.no_grad():  # another size than the built 256x128: the positional grid is resampled
            assert model(torch.randn(1, 3, 128, 64)).shape == (1, 6 * 512)


@pytest.mark.parametrize("name", ["profd_tiny", "profd_tiny_vit"])
def test_tiny_variant_takes_any_input_size(name):
    from torchreid.reid import models

    model = models.build_model(name, 4, loss="triplet", pretrained=False)
    for size in ((128, 64), (64, 32), (100, 50), (160, 80)):
        logits, feat = model.train()(torch.randn(2, 3, *size))  # torchreid's triplet engine interface
        assert logits.shape == (2, 4) and feat.shape == (2, 128)
        with torch.no_grad():
            assert model.eval()(torch.randn(2, 3, *size)).shape == (2, 6 * 128)


def test_feature_extractor_gives_the_trained_features(extractor, query_paths,  # noqa: F811
                                                      profd_checkpoint, capsys):
    fe = _feature_extractor("profd_tiny", profd_checkpoint)  # built at 128x64, checkpoint trained at 64x32
    out = capsys.readouterr().out
    assert "Loaded ProFD weights" in out and "image_size=(64, 32)" in out and "Successfully" not in out
    ours = extractor.extract(query_paths, batch_size=EVAL_BATCH)
    batch = torch.stack([extractor.transform(to_image(p)).as_subclass(torch.Tensor) for p in query_paths])
    assert torch.equal(fe(batch), ours.embedding())  # the same preprocessed images: the same numbers
    # its own preprocessing (PIL resize, ToTensor) rounds differently in the last bits only
    assert torch.allclose(fe(query_paths), ours.embedding(), atol=1e-5)
    # torchreid's loader without the plugin's: "Successfully loaded" with the positional grid dropped
    from torchreid.reid.models import build_model

    fresh = build_model("profd_tiny", 1, pretrained=False).eval()  # as FeatureExtractor builds it
    with redirect_stdout(io.StringIO()) as printed:
        host.ORIGINALS["load_pretrained_weights"](fresh, profd_checkpoint)
    assert "Successfully loaded" in printed.getvalue() and "positional_embedding" in printed.getvalue()
    with torch.no_grad():
        assert not torch.allclose(fresh(batch), ours.embedding(), atol=1e-3)


def test_feature_extractor_follows_the_checkpoints_test_settings(synthetic_root, tmp_path):
    from profd_plugin import ProFDExtractor

    path = make_profd_checkpoint(str(tmp_path / "sigmoid.pth"), synthetic_root,
                                 **{"profd.visibility.test_mode": "sigmoid",
                                    "profd.visibility.threshold": 0.5})
    images = torch.rand(3, 3, 64, 32)
    ours = ProFDExtractor.from_checkpoint(path, device="cpu")
    normalised = (images - 0.5) / 0.5
    assert torch.equal(_feature_extractor("profd_tiny", path)(normalised), ours.extract(images).embedding())


def test_feature_extractor_stops_with_one_line(profd_checkpoint, synthetic_root, tmp_path):
    with pytest.raises(CheckpointError, match=r"profd.clip.name 'tiny_rn10', this model was built with "
                                              r"'ViT-B-16': use model_name='profd_tiny'"):
        _feature_extractor("profd", profd_checkpoint)
    s16 = make_profd_checkpoint(str(tmp_path / "s16.pth"), synthetic_root, **{"profd.clip.stride": 16})
    with pytest.raises(CheckpointError, match="profd.clip.stride 16, this model was built with 32"):
        _feature_extractor("profd_tiny", s16)
    ckpt = torch.load(profd_checkpoint, weights_only=True)
    torchreid_file = tmp_path / "other.pth"
    other_config = ckpt["config"].replace("name: profd", "name: osnet_x0_25", 1)
    torch.save({**ckpt, "config": other_config}, torchreid_file)
    with pytest.raises(CheckpointError, match="'osnet_x0_25' model, not ProFD: load it with model_name="):
        _feature_extractor("profd_tiny", str(torchreid_file))
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(open(profd_checkpoint, "rb").read()[:1000])
    with pytest.raises(CheckpointError, match="truncated"):
        _feature_extractor("profd_tiny", str(truncated))
    bare = tmp_path / "bare.pth"  # torchreid's own save_checkpoint: no config, trained at 64x32
    torch.save({"state_dict": ckpt["state_dict"], "epoch": 1}, bare)
    with pytest.raises(CheckpointError, match="positional_embedding' shape"):
        _feature_extractor("profd_tiny", str(bare))  # built at 128x64: its size is not stored, so it stops
    error = None
    try:
        _feature_extractor("profd_tiny", str(bare))
    except CheckpointError as err:
        error = str(err)
    assert "\n" not in error and str(bare) in error


def test_torchreid_engine_checkpoint_of_the_same_shape_loads_exactly(tmp_path):
    from types import SimpleNamespace

    from torchreid.reid.engine import Engine
    from torchreid.reid.models import build_model

    trained = build_model("profd_tiny", 5, pretrained=False)
    # what torchreid's own engines write after `import profd_plugin` (the repaired Engine.save_model)
    engine = SimpleNamespace(get_model_names=lambda: ["model"], _models={"model": trained},
                             _optims={"model": None}, _scheds={"model": None})
    Engine.save_model(engine, 2, 0.5, str(tmp_path))
    path = tmp_path / "model" / "model.pth.tar-3"
    fe = _feature_extractor("profd_tiny", str(path), size=(128, 64))
    images = torch.randn(2, 3, 128, 64)
    with torch.no_grad():
        assert torch.equal(fe(images), trained.eval()(images))


def test_torchreid_models_load_exactly_as_before(tmp_path):
    from torchreid.reid.models import build_model
    from torchreid.reid.utils import feature_extractor, load_pretrained_weights, torchtools

    assert feature_extractor.load_pretrained_weights is torchtools.load_pretrained_weights
    assert load_pretrained_weights is torchtools.load_pretrained_weights
    source = build_model("osnet_x0_25", 7, pretrained=False)
    path = tmp_path / "osnet.pth"
    torch.save({"state_dict": source.state_dict()}, path)
    outputs = []
    for loader in (host.ORIGINALS["load_pretrained_weights"], load_pretrained_weights):
        torch.manual_seed(0)
        target = build_model("osnet_x0_25", 3, pretrained=False)  # another classifier: dropped by torchreid
        with redirect_stdout(io.StringIO()) as printed:
            loader(target, str(path))
        outputs.append((target.state_dict(), printed.getvalue()))
    (state_a, text_a), (state_b, text_b) = outputs
    assert text_a == text_b and "discarded" in text_a and str(path) in text_a
    assert state_a.keys() == state_b.keys() and all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert os.path.basename(host.__file__) == "host.py"
