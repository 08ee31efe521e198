"""``tools/export.py`` and ``profd_plugin.export``: ONNX / TorchScript files that reproduce PyTorch.

A tiny ProFD (the CPU demo's CLIP at 64x32) saved with ``make_checkpoint``, with its BatchNorm statistics
and visibility biases moved off their initial values so that the BN layers and the visibility threshold
are exercised, is exported by the tool in-process. The files are run by onnxruntime (CPU) and
``torch.jit.load`` at two batch sizes other than the ones the tool checked itself, against the model's
own eval ``forward``.
"""
import contextlib
import hashlib
import io
import json
import logging
import os

import pytest
import torch
from conftest import load_script, require_extra

from profd_plugin.checkpoint import build_from_checkpoint, make_checkpoint
from profd_plugin.config import setup_cfg
from profd_plugin.export import (
    OUTPUT_NAMES,
    ProFDInference,
    export_onnx,
    export_torchscript,
    load_runner,
    parity_check,
    random_images,
)
from profd_plugin.export_files import _write
from profd_plugin.metrics import visibility_aware_distance
from profd_plugin.modeling import build_profd_model

require_extra("onnxruntime", "export")  # every test here exports or runs an exported file
require_extra("onnxscript", "export")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "profd_synthetic_vit.yaml")  # the tiny ViT (the paper's kind of tower)
MAIN_JOB_CONFIG = os.path.join(ROOT, "configs", "profd_synthetic.yaml")  # tiny_rn10: a CLIP ResNet tower
SIZE = (64, 32)
NUM_CLASSES = 6
TOLERANCE = 1e-4
#: batch sizes these tests run the files at (the tool checks dynamic exports at 1 and 3 itself)
TEST_BATCHES = (2, 5)
#: visibility biases spread so that some parts fall below the 0.1 threshold and some stay above it
VIS_BIAS = (3.0, -3.0, 0.5, 2.0, -2.0)
#: reference visibility this close to the threshold could flip on a 1e-7 difference: the inputs avoid it
THRESHOLD_MARGIN = 1e-3


EXPORT = load_script("tools/export.py")


@contextlib.contextmanager
def _fresh_process_logging():
    """Root logging as a new process has it: no handlers left behind by in-process ``tools/main.py`` runs
    of other tests (``logging.basicConfig`` there binds a handler to that run's console, closed since)."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers = []
    root.setLevel(logging.WARNING)
    try:
        yield
    finally:
        root.handlers = saved[0]
        root.setLevel(saved[1])


def run_export(*args):
    """(exit code, stdout, stderr) of ``tools/export.py`` run in-process."""
    out, err = io.StringIO(), io.StringIO()
    with _fresh_process_logging(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = EXPORT.main([str(a) for a in args])
        except SystemExit as e:  # argparse errors
            code = e.code
    return code, out.getvalue(), err.getvalue()


def _tiny_model(*opts, config=CONFIG):
    cfg = setup_cfg(config, ["data.height", SIZE[0], "data.width", SIZE[1], *opts])
    torch.manual_seed(0)
    model = build_profd_model(cfg, NUM_CLASSES)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # trained-looking BN statistics and visibility biases
        for bn in (model.bnneck_global.bn, model.part_bn.bn):
            bn.running_mean.normal_(0.0, 0.5, generator=gen)
            bn.running_var.uniform_(0.5, 2.0, generator=gen)
        model.visibility_head.bias.copy_(torch.tensor(VIS_BIAS))
    return model.eval(), cfg


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    model, cfg = _tiny_model()
    path = str(tmp_path_factory.mktemp("ckpt") / "model.pth.tar-1")
    torch.save(make_checkpoint(model, cfg, num_classes=NUM_CLASSES, epoch=1), path)
    return path


@pytest.fixture(scope="module")
def reference(tiny_ckpt):
    """The checkpoint's model (PyTorch) and its eval outputs at TEST_BATCHES."""
    model, cfg, _ = build_from_checkpoint(tiny_ckpt)
    inputs, outputs = {}, {}
    for n in TEST_BATCHES:
        inputs[n] = random_images(n, SIZE, cfg.data.norm_mean, cfg.data.norm_std, seed=100)
        with torch.no_grad():
            emb = model(inputs[n])
        outputs[n] = (emb.global_feat, emb.part_feats, emb.visibility)
    return model, inputs, outputs


def _export(tmp_path_factory, tiny_ckpt, name, *args):
    folder = tmp_path_factory.mktemp(name)
    path = folder / name
    path.write_bytes(b"an older export")  # replaced atomically
    code, out, err = run_export("--checkpoint", tiny_ckpt, "--output", path, *args)
    assert code == 0, err
    return str(path), out, json.loads((folder / f"{name}.json").read_text())


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory, tiny_ckpt):
    return _export(tmp_path_factory, tiny_ckpt, "profd.onnx", "--format", "onnx", "--batch", "dynamic")


@pytest.fixture(scope="module")
def torchscript_file(tmp_path_factory, tiny_ckpt):
    return _export(tmp_path_factory, tiny_ckpt, "profd.pt", "--format", "torchscript")


def _assert_parity(run, reference):
    _, inputs, outputs = reference
    for n in TEST_BATCHES:
        got = run(inputs[n])
        assert len(got) == len(OUTPUT_NAMES)
        for name, out, ref in zip(OUTPUT_NAMES, got, outputs[n]):
            assert tuple(out.shape) == tuple(ref.shape), name
            assert float((out - ref).abs().max()) <= TOLERANCE, (name, n)


def test_the_threshold_is_exercised_and_not_borderline(reference):
    for _, _, vis in reference[2].values():
        assert bool((vis == 0).any()) and bool((vis > 0).any())
        assert float((vis[vis > 0] - 0.1).abs().min()) > THRESHOLD_MARGIN


def test_inference_module_is_the_models_eval_forward(reference):
    model, inputs, outputs = reference
    module = ProFDInference(model)
    for n in TEST_BATCHES:
        with torch.no_grad():
            got = module(inputs[n])
        assert all(torch.equal(a, b) for a, b in zip(got, outputs[n]))  # bit-identical
    keys = set(module.state_dict())
    assert "profd.prompt_learner.prompts" in keys
    assert not any(k.startswith(("profd.memory.", "profd.classifier.", "profd.bnneck_concat.")) for k in keys)
    assert not any("text_encoder" in k or k.endswith(".ctx") for k in keys)  # no text encoder in the graph
    with torch.no_grad():
        assert torch.equal(module.profd.prompt_learner.prompts, model.prompt_learner())
    assert hasattr(model.prompt_learner, "text_encoder") and model.memory is not None  # model untouched
    module.train()
    assert not module.training and not model.training


def test_onnx_matches_pytorch_at_two_batch_sizes(onnx_file, reference):
    import onnx
    import onnxruntime as ort

    path, _, meta = onnx_file
    proto = onnx.load(path)
    onnx.checker.check_model(proto)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert proto.graph.input[0].name == "images" and dims[0].dim_param and dims[0].dim_value == 0
    assert [d.dim_value for d in dims[1:]] == [3, *SIZE]
    assert [o.name for o in proto.graph.output] == list(OUTPUT_NAMES)
    assert meta["opset"] == next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])

    def run(images):
        return [torch.from_numpy(v) for v in session.run(None, {"images": images.numpy()})]

    _assert_parity(run, reference)


def test_torchscript_matches_pytorch_at_two_batch_sizes(torchscript_file, reference):
    path, _, meta = torchscript_file
    with open(path, "rb") as f:
        run = load_runner(f.read(), "torchscript")
    _assert_parity(run, reference)
    assert meta["format"] == "torchscript" and meta["opset"] is None and meta["batch"] == "dynamic"


def test_tool_prints_its_parity_check(onnx_file):
    _, out, meta = onnx_file
    lines = out.splitlines()
    assert "onnxruntime" in out and "max abs difference" in out
    for batch in (1, 3):
        line = next(x for x in lines if x.strip().startswith(f"batch {batch}:"))
        assert all(f"{name} " in line for name in OUTPUT_NAMES)
        for name in OUTPUT_NAMES:
            assert meta["parity"]["max_abs_diff"][str(batch)][name] <= TOLERANCE
    assert meta["parity"]["batches"] == [1, 3] and meta["parity"]["tolerance"] == TOLERANCE


def test_sidecar_values(onnx_file, tiny_ckpt):
    path, _, meta = onnx_file
    folder = os.path.dirname(path)
    assert sorted(os.listdir(folder)) == ["profd.onnx", "profd.onnx.json"]  # no temporary files left
    assert meta["format"] == "onnx" and meta["file"] == "profd.onnx" and meta["batch"] == "dynamic"
    assert meta["image_size"] == list(SIZE)
    inp = meta["input"]
    assert inp["name"] == "images" and inp["shape"] == ["batch", 3, *SIZE] and inp["channel_order"] == "RGB"
    assert inp["layout"] == "NCHW" and inp["normalized"] is True and inp["dtype"] == "float32"
    assert inp["mean"] == [0.5, 0.5, 0.5] and inp["std"] == [0.5, 0.5, 0.5]
    dim, parts = 128, 5  # the tiny CLIP's joint width, the five_v grouping
    assert meta["outputs"] == {"global": {"shape": ["batch", dim], "dtype": "float32"},
                               "parts": {"shape": ["batch", parts, dim], "dtype": "float32"},
                               "visibility": {"shape": ["batch", parts], "dtype": "float32"}}
    assert len(meta["part_names"]) == parts and meta["part_names"][0] == "head"
    dist = meta["distance"]
    assert dist["mode"] == "visibility" and dist["metric"] == "euclidean"
    assert dist["weights"] == {"global": 1.0, "part_k": "visibility_q[k] * visibility_g[k]"}
    assert dist["visibility"] == {"test_mode": "softmax", "temperature": 0.1, "threshold": 0.1,
                                  "rule": dist["visibility"]["rule"], "applied_in_graph": True}
    assert meta["test_time_flip"] == {"enabled": False}
    ckpt = meta["checkpoint"]
    assert ckpt["path"] == os.path.abspath(tiny_ckpt) and ckpt["epoch"] == 1 and ckpt["clip"] == "tiny"
    assert ckpt["sha256"] == hashlib.sha256(open(tiny_ckpt, "rb").read()).hexdigest()
    assert {"torch", "onnx", "onnxruntime", "onnxscript", "profd_plugin"} <= set(meta["versions"])


def test_distance_named_by_the_sidecar_ranks_as_evaluation(onnx_file, reference):
    import onnxruntime as ort

    path, _, meta = onnx_file
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    _, inputs, outputs = reference
    query, gallery = TEST_BATCHES
    exported = {n: [torch.from_numpy(v) for v in session.run(None, {"images": inputs[n].numpy()})]
                for n in (query, gallery)}
    kwargs = dict(metric=meta["distance"]["metric"], mode=meta["distance"]["mode"])
    ours = visibility_aware_distance(*exported[query], *exported[gallery], **kwargs)
    theirs = visibility_aware_distance(*outputs[query], *outputs[gallery], **kwargs)
    assert float((ours - theirs).abs().max()) <= TOLERANCE


def test_fixed_batch_onnx_at_opset_17(tmp_path_factory, tiny_ckpt, reference):
    import onnx
    import onnxruntime as ort

    batch = TEST_BATCHES[0]
    path, out, meta = _export(tmp_path_factory, tiny_ckpt, "fixed.onnx", "--format", "onnx",
                              "--batch", batch, "--opset", 17)
    proto = onnx.load(path)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == batch
    assert next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) == 17
    assert meta["opset"] == 17 and meta["batch"] == batch and meta["input"]["shape"][0] == batch
    assert meta["outputs"]["parts"]["shape"] == [batch, 5, 128] and meta["parity"]["batches"] == [batch]
    assert f"batch {batch}:" in out
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    _, inputs, outputs = reference
    got = session.run(None, {"images": inputs[batch].numpy()})
    diffs = [float((torch.from_numpy(a) - b).abs().max()) for a, b in zip(got, outputs[batch])]
    assert max(diffs) <= TOLERANCE
    with pytest.raises(Exception, match="images"):  # the batch is fixed
        session.run(None, {"images": inputs[TEST_BATCHES[1]].numpy()})


def test_every_attention_mode_exports_no_decoder_and_sigmoid_visibility():
    model, cfg = _tiny_model("profd.decoder.attention", "none", "profd.visibility.test_mode", "sigmoid")
    module = ProFDInference(model)
    run = load_runner(export_torchscript(module, batch=None), "torchscript")
    parity = parity_check(module, run, batches=(1, 4), mean=cfg.data.norm_mean, std=cfg.data.norm_std)
    assert all(d <= TOLERANCE for diffs in parity.values() for d in diffs.values())
    assert set(parity) == {1, 4} and set(parity[1]) == set(OUTPUT_NAMES)


def test_main_job_clip_resnet_exports_to_onnx_and_torchscript_with_parity():
    model, cfg = _tiny_model(config=MAIN_JOB_CONFIG)
    assert cfg.profd.clip.name == "tiny_rn10"
    module = ProFDInference(model)
    for data, fmt in ((export_onnx(module), "onnx"), (export_torchscript(module), "torchscript")):
        parity = parity_check(module, load_runner(data, fmt), batches=TEST_BATCHES, mean=cfg.data.norm_mean,
                              std=cfg.data.norm_std)
        assert set(parity) == set(TEST_BATCHES) and set(parity[TEST_BATCHES[0]]) == set(OUTPUT_NAMES)
        assert all(d <= TOLERANCE for diffs in parity.values() for d in diffs.values()), (fmt, parity)


# ---------------------------------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def resnet_ckpt(tmp_path_factory):
    from torchreid.reid.models import build_model

    config = os.path.join(ROOT, "configs", "baseline_osnet_synthetic.yaml")
    cfg = setup_cfg(config, ["model.name", "resnet18"])
    model = build_model("resnet18", NUM_CLASSES, loss="triplet", pretrained=False)
    path = str(tmp_path_factory.mktemp("resnet") / "resnet18.pth.tar")
    torch.save(make_checkpoint(model, cfg, num_classes=NUM_CLASSES, epoch=1), path)
    return path


def _one_line_error(code, err, *needles):
    lines = err.strip().splitlines()
    assert code != 0 and len(lines) == 1 and lines[0].startswith("error:"), (code, lines)
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def _bad_case(case, tmp_path, tiny_ckpt, resnet_ckpt):
    """(args, needles) of one bad command line; everything it could write would land in tmp_path/out."""
    out = tmp_path / "out"
    out.mkdir()
    target = str(out / "m.onnx")
    if case == "missing":
        return ["--checkpoint", tmp_path / "nope.pth.tar", "--format", "onnx", "--output", target], \
            ["checkpoint not found", "nope.pth.tar"]
    if case == "truncated":
        bad = tmp_path / "cut.pth.tar"
        bad.write_bytes(open(tiny_ckpt, "rb").read()[:4096])
        return ["--checkpoint", bad, "--format", "onnx", "--output", target], ["cut.pth.tar", "truncated"]
    if case == "not_profd":
        return ["--checkpoint", resnet_ckpt, "--format", "onnx", "--output", target], \
            ["resnet18", "not ProFD"]
    if case == "bare_state_dict":
        bare = tmp_path / "bare.pth"
        torch.save(torch.load(tiny_ckpt, weights_only=True)["state_dict"], bare)
        return ["--checkpoint", bare, "--format", "torchscript", "--output", target], \
            ["bare.pth", "no config"]
    base = ["--checkpoint", tiny_ckpt, "--output", target]
    if case == "format":
        return ["--checkpoint", tiny_ckpt, "--format", "tflite", "--output", target], ["'tflite'", "onnx"]
    if case == "no_format":
        return ["--checkpoint", tiny_ckpt, "--output", target], ["--format"]
    if case == "under_a_file":
        (out / "afile").write_text("x")
        return ["--checkpoint", tiny_ckpt, "--format", "onnx", "--output", out / "afile" / "m.onnx"], \
            ["afile", "not a folder"]
    if case == "a_folder":
        (out / "sub").mkdir()
        return ["--checkpoint", tiny_ckpt, "--format", "onnx", "--output", out / "sub"], \
            ["sub", "is a folder"]
    if case == "the_checkpoint":
        return ["--checkpoint", tiny_ckpt, "--format", "torchscript", "--output", tiny_ckpt], \
            ["the checkpoint itself"]
    if case in ("batch_zero", "batch_word"):
        return base + ["--format", "onnx", "--batch", "0" if case == "batch_zero" else "many"], ["--batch"]
    if case == "low_opset":
        return base + ["--format", "onnx", "--opset", "16"], ["opset", ">= 17"]
    if case == "opset_torchscript":
        return base + ["--format", "torchscript", "--opset", "18"], ["ONNX only"]
    raise AssertionError(case)


BAD_CASES = ["missing", "truncated", "not_profd", "bare_state_dict", "format", "no_format", "under_a_file",
             "a_folder", "the_checkpoint", "batch_zero", "batch_word", "low_opset", "opset_torchscript"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_one_line_and_nothing_written(case, tmp_path, tiny_ckpt, resnet_ckpt):
    before_ckpt = open(tiny_ckpt, "rb").read()
    args, needles = _bad_case(case, tmp_path, tiny_ckpt, resnet_ckpt)
    before = sorted(os.listdir(tmp_path / "out"))
    code, _, err = run_export(*args)
    _one_line_error(code, err, *needles)
    assert sorted(os.listdir(tmp_path / "out")) == before
    assert open(tiny_ckpt, "rb").read() == before_ckpt


def test_missing_onnx_extra_says_what_to_install(tmp_path, tiny_ckpt, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    code, _, err = run_export("--checkpoint", tiny_ckpt, "--format", "onnx", "--output", tmp_path / "m.onnx")
    _one_line_error(code, err, "onnxruntime", "pip install 'profd_plugin[export]'")
    assert os.listdir(tmp_path) == []


def test_failed_parity_check_writes_nothing(tmp_path, tiny_ckpt, monkeypatch):
    import profd_plugin.export_files as export_files

    def off_by_a_little(data, fmt):
        run = load_runner(data, fmt)
        return lambda images: tuple(t + 1e-3 if i == 2 else t for i, t in enumerate(run(images)))

    monkeypatch.setattr(export_files, "load_runner", off_by_a_little)
    target = tmp_path / "m.pt"
    target.write_bytes(b"the previous export")
    code, _, err = run_export("--checkpoint", tiny_ckpt, "--format", "torchscript", "--output", target)
    _one_line_error(code, err, "parity check failed", "'visibility'", "nothing written")
    assert target.read_bytes() == b"the previous export" and sorted(os.listdir(tmp_path)) == ["m.pt"]


def test_failed_file_write_leaves_no_sidecar(tmp_path):
    from profd_plugin.export import ExportError

    blocked = tmp_path / "blocked"
    blocked.mkdir()  # the exported file cannot replace a folder: the write fails after the sidecar's began
    with pytest.raises(ExportError, match="cannot write"):
        _write(str(blocked), b"onnx bytes", {"format": "onnx"})
    assert sorted(os.listdir(tmp_path)) == ["blocked"] and os.listdir(blocked) == []


def _docs_snippet() -> str:
    text = open(os.path.join(ROOT, "docs", "EXPORT.md")).read()
    section = text[text.index("## Using an exported file"):]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_docs_snippet_runs_verbatim_and_its_distance_is_the_packages(onnx_file, reference, tmp_path,
                                                                     monkeypatch, capsys):
    import numpy as np
    from PIL import Image

    path, _, _ = onnx_file
    for name in ("profd.onnx", "profd.onnx.json"):
        os.symlink(os.path.join(os.path.dirname(path), name), tmp_path / name)
    pixels = np.random.default_rng(0).integers(0, 256, size=(100, 40, 3), dtype=np.uint8)  # another size
    Image.fromarray(pixels).save(tmp_path / "crop.jpg")
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(_docs_snippet(), "docs/EXPORT.md", "exec"), namespace)
    assert capsys.readouterr().out.strip() == "0.0"
    assert namespace["glob"].shape == (1, 128) and namespace["vis"].shape == (1, 5)
    _, _, outputs = reference
    (qg, qp, qv), (gg, gp, gv) = (outputs[n] for n in TEST_BATCHES)
    expected = visibility_aware_distance(qg, qp, qv, gg, gp, gv, metric="euclidean", mode="visibility")
    ours = [[namespace["profd_distance"]((qg[i].numpy(), qp[i].numpy(), qv[i].numpy()),
                                         (gg[j].numpy(), gp[j].numpy(), gv[j].numpy()))
             for j in range(len(gg))] for i in range(len(qg))]
    assert float((torch.tensor(ours) - expected).abs().max()) <= 1e-5
