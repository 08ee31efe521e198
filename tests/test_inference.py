"""ProFDExtractor: the features of ``tools/main.py --eval-only``, every input kind, attention maps, ranking,
the README snippet."""
import os
import re
import shutil
import textwrap

import numpy as np
import pytest
import torch
from conftest import make_profd_checkpoint, require_extra, tiny_run_opts
from PIL import Image
from test_main import CONFIG, MAIN, ROOT

from profd_plugin import ProFDExtractor, ProFDFeatures
from profd_plugin.errors import CheckpointError, DatasetError
from profd_plugin.evaluation import EvaluationMixin
from profd_plugin.runs import latest_checkpoint

EVAL_BATCH = 16  # test.batch_size of tiny_run_opts


@pytest.fixture(scope="module")
def extractor(profd_checkpoint):
    return ProFDExtractor.from_checkpoint(profd_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def query_paths(synthetic_root):
    folder = os.path.join(synthetic_root, "synthetic_occluded", "query")
    return sorted(os.path.join(folder, n) for n in os.listdir(folder))


def _record_evaluation(monkeypatch):
    """Record what the engine computes: (features, items) per loader and the distance matrices."""
    seen = {"feats": [], "dist": []}
    extract, distance = EvaluationMixin.extract_dataset_features, EvaluationMixin.compute_distance

    def extract_and_record(self, loader):
        out = extract(self, loader)
        seen["feats"].append((out[0], [item[0] for item in loader.dataset.items]))
        return out

    def distance_and_record(self, *args, **kwargs):
        out = distance(self, *args, **kwargs)
        seen["dist"].append(out)
        return out

    monkeypatch.setattr(EvaluationMixin, "extract_dataset_features", extract_and_record)
    monkeypatch.setattr(EvaluationMixin, "compute_distance", distance_and_record)
    return seen


@pytest.mark.parametrize("flip", [False, True])
def test_features_equal_eval_only(synthetic_root, profd_checkpoint, tmp_path, monkeypatch, flip):
    seen = _record_evaluation(monkeypatch)
    opts = tiny_run_opts(synthetic_root, str(tmp_path), **{"model.load_weights": profd_checkpoint,
                                                           "profd.test.flip": flip})
    assert MAIN.main(["--config-file", CONFIG, *opts, "--eval-only"]) == 0
    (q_eval, q_paths), (g_eval, g_paths) = seen["feats"]
    extractor = ProFDExtractor.from_checkpoint(profd_checkpoint, device="cpu",
                                               overrides=("profd.test.flip", str(flip)))
    q, g = (extractor.extract(paths, batch_size=EVAL_BATCH) for paths in (q_paths, g_paths))
    for ours, theirs in ((q, q_eval), (g, g_eval)):
        for name in ("global_feat", "part_feats", "visibility"):
            assert torch.equal(getattr(ours, name), getattr(theirs, name)), name  # exact, fp32
    assert torch.equal(extractor.distance(q, g), seen["dist"][0])
    assert g.part_feats.shape == (len(g_paths), 5, 128) and g.visibility.shape == (len(g_paths), 5)


def test_every_input_kind_gives_the_evaluation_features(extractor, query_paths, tmp_path):
    path = query_paths[0]
    ref = extractor.extract([path])
    with Image.open(path) as im:
        rgb = im.convert("RGB")
    array = np.asarray(rgb)  # HxWxC uint8, RGB order
    tensor = torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()  # CxHxW uint8
    for same in (rgb, array, tensor, path, [tensor], tensor[None]):
        assert torch.equal(extractor.extract(same).global_feat, ref.global_feat), type(same)
    rgba = rgb.convert("RGBA")
    rgba.putalpha(7)  # alpha is dropped, as when a file is read
    assert torch.equal(extractor.extract(rgba).part_feats, ref.part_feats)
    assert torch.equal(extractor.extract(np.asarray(rgba)).part_feats, ref.part_feats)
    floats = extractor.extract(tensor.float() / 255)  # skips the uint8 rounding of the resize only
    assert torch.nn.functional.cosine_similarity(floats.global_feat, ref.global_feat).item() > 0.999
    grey = rgb.convert("L")
    grey_ref = extractor.extract(grey.convert("RGB"))
    grey_array = np.asarray(grey)
    for same in (grey, grey_array, grey_array[:, :, None], torch.from_numpy(grey_array.copy())[None]):
        assert torch.equal(extractor.extract(same).global_feat, grey_ref.global_feat)
    palette = rgb.convert("P")
    palette_ref = extractor.extract(palette.convert("RGB"))
    assert torch.equal(extractor.extract(palette).global_feat, palette_ref.global_feat)
    big = rgb.resize((3 * rgb.width, 2 * rgb.height))  # any size: resized to the trained 64x32
    assert extractor.extract([big, rgb]).global_feat.shape == (2, 128)


def test_bad_inputs_are_one_line_errors(extractor, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    with pytest.raises(DatasetError, match="broken.jpg"):
        extractor.extract([str(broken)])
    with pytest.raises(ValueError, match="uint8"):
        extractor.extract(np.zeros((8, 4, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        extractor.extract(torch.full((3, 8, 4), 2.0))
    with pytest.raises(ValueError, match="CxHxW"):
        extractor.extract(torch.zeros(4, 8, 4, dtype=torch.uint8))
    with pytest.raises(TypeError, match="unsupported image type"):
        extractor.extract([3])
    with pytest.raises(ValueError, match="no images"):
        extractor.extract([])


def test_attention_maps(extractor, query_paths):
    plain = extractor.extract(query_paths[:3])
    feats = extractor.extract(query_paths[:3], attention=True)
    assert torch.equal(feats.global_feat, plain.global_feat) and plain.spa_maps is None
    grid = extractor.model.backbone.grid_for(extractor.image_size)
    assert feats.spa_maps.shape == feats.alignment_maps.shape == (3, 5, *grid)
    assert torch.allclose(feats.spa_maps.sum((2, 3)), torch.ones(3, 5), atol=1e-5)  # a distribution per part
    assert (feats.alignment_maps >= 0).all() and (feats.alignment_maps.sum(1) <= 1 + 1e-6).all()
    assert feats[1:].spa_maps.shape[0] == 2 and len(ProFDFeatures.cat([feats, plain])) == 6


def test_progress_bar_on_long_lists(extractor, query_paths, capsys):
    extractor.extract(query_paths[:3], batch_size=1)
    assert "ProFD features" in capsys.readouterr().err
    extractor.extract(query_paths[:3])  # one batch: no bar
    assert "ProFD features" not in capsys.readouterr().err


def test_rank_and_distance(extractor, query_paths):
    feats = extractor.extract(query_paths)
    q = feats[:2]
    dist = extractor.distance(q, feats)
    full = extractor.rank(q, feats)
    assert torch.equal(full.indices, torch.argsort(dist, dim=1, stable=True))
    assert full.indices[0, 0] == 0 and full.indices[1, 0] == 1  # each query is its own nearest image
    top = extractor.rank(q, feats, topk=3)
    assert torch.equal(top.indices, full.indices[:, :3])
    assert torch.allclose(top.distances, full.distances[:, :3])
    for mode in ("global", "parts"):
        assert not torch.equal(extractor.distance(q, feats, mode=mode), dist)
    require_extra("faiss", "search")
    index = extractor.build_index(feats, kind="flat")
    approx = extractor.rank(q, feats, topk=3, index=index)
    assert torch.equal(approx.indices, top.indices)
    with pytest.raises(ValueError, match="needs topk"):
        extractor.rank(q, feats, index=index)
    with pytest.raises(ValueError, match="another gallery"):
        extractor.rank(q, feats[:2], topk=2, index=index)
    emb = feats.embedding()
    assert emb.shape == (len(feats), 6 * 128)


def test_checkpoint_lookup_and_errors(profd_checkpoint, synthetic_root, tmp_path):
    run = tmp_path / "save" / "profd-train-20240101-000000"
    (run / "model").mkdir(parents=True)
    for epoch in (1, 2):
        shutil.copy(profd_checkpoint, run / "model" / f"model.pth.tar-{epoch}")
    assert latest_checkpoint(str(run)) == str(run / "model" / "model.pth.tar-2")
    assert latest_checkpoint(str(tmp_path / "save")) == str(run / "model" / "model.pth.tar-2")
    assert latest_checkpoint(str(tmp_path / "nothing")) is None
    with pytest.raises(CheckpointError, match="no checkpoint found at .*nothing"):
        ProFDExtractor.from_checkpoint(str(tmp_path / "nothing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint found"):
        ProFDExtractor.from_checkpoint(str(tmp_path / "empty"))
    other = make_profd_checkpoint(str(tmp_path / "osnet.pth"), synthetic_root)
    ckpt = torch.load(other, weights_only=True)
    ckpt["config"] = ckpt["config"].replace("name: profd", "name: osnet_x0_25", 1)
    torch.save(ckpt, other)
    with pytest.raises(CheckpointError, match="'osnet_x0_25' model, not ProFD"):
        ProFDExtractor.from_checkpoint(other)


def _readme_snippet() -> str:
    text = open(os.path.join(ROOT, "README.md")).read()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    snippet = [b for b in blocks if "ProFDExtractor" in b]
    assert len(snippet) == 1, "README.md needs exactly one python block with ProFDExtractor"
    return snippet[0]


def test_readme_snippet_runs_verbatim(profd_checkpoint, synthetic_root, tmp_path, monkeypatch, capsys):
    code = _readme_snippet()
    assert len(code.strip().splitlines()) <= 6
    run = tmp_path / "log" / "profd_synthetic" / "profd-train-20240101-000000" / "model"  # the quick start's
    run.mkdir(parents=True)
    shutil.copy(profd_checkpoint, run / "model.pth.tar-30")
    (tmp_path / "reid-data").symlink_to(os.path.join(synthetic_root))
    monkeypatch.chdir(tmp_path)
    exec(compile(textwrap.dedent(code), "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "torch.Size([3, 128]) torch.Size([3, 5, 128]) torch.Size([3, 5])" in out  # 3 queries, K=5, D=128
    assert "indices" in out
