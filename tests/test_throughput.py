"""benchmarks/throughput.py and benchmarks/gpu_smoke.py: their CPU smoke runs, and the timed training step
is the engine's step."""
import json
import os

import pytest
import torch
from conftest import load_script, tiny_run_opts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


THROUGHPUT, GPU_SMOKE = load_script("benchmarks/throughput.py"), load_script("benchmarks/gpu_smoke.py")
FLOPS = load_script("benchmarks/backbone_flops.py")


def test_a_clocked_step_is_the_training_step(synthetic_root, tmp_path):
    """The breakdown's clock sees every stage in order and changes nothing: same losses, weights, banks."""
    opts = tiny_run_opts(synthetic_root, str(tmp_path))
    cpu = torch.device("cpu")
    (ref, _), (timed, _) = THROUGHPUT.build_engine(opts, cpu), THROUGHPUT.build_engine(opts, cpu)
    timed.model.load_state_dict(ref.model.state_dict())
    ref.begin_epoch(0)
    batch = next(iter(ref.train_loader))
    stages = []
    for engine, clock in ((ref, None), (timed, stages.append)):
        engine.model.train()
        torch.manual_seed(0)  # the same dropout draws
        engine.values = engine.forward_backward(batch, clock)
    assert ref.values == timed.values and len(ref.values) == 11  # ten terms and the total
    assert stages == list(THROUGHPUT.STAGES)
    for (name, a), b in zip(ref.model.state_dict().items(), timed.model.state_dict().values()):
        assert torch.equal(a, b), name  # incl. the memory banks after their update


def test_throughput_quick_run_reports_ratios_and_stages(tmp_path, capsys):
    path = tmp_path / "throughput.json"
    assert THROUGHPUT.main(["--quick", "--rounds", "1", "--steps", "1", "--json", str(path)]) == 0
    out = json.load(open(path))
    assert [r["batch"] for r in out["inference"]] == [64, 1] and out["inference_model"] == "tiny"
    assert all(r["ratio"] > 0 and r["backbone_img_s"] > 0 and r["profd_img_s"] > 0 for r in out["inference"])
    step = out["train_step"]["tiny"]
    assert list(step["stage_s"]) == list(THROUGHPUT.STAGES) and all(v >= 0 for v in step["stage_s"].values())
    assert step["step_s"] > 0 and step["batch"] == 32 and step["image_size"] == [128, 64]
    text = capsys.readouterr().out
    assert "ProFD / backbone time" in text and "memory_update" in text and "this is a smoke run" in text


def test_gpu_smoke_dry_run_on_cpu(tmp_path):
    """The in-process step and one scripted step of the GPU smoke test, on CPU (the GPU run is not part of
    the suite; docs/PERFORMANCE.md says whether it has run). The report is the only file written outside
    the scratch folder."""
    out = tmp_path / "smoke"
    code = GPU_SMOKE.main(["--device", "cpu", "--quick", "--json", str(out / "gpu_smoke.json"),
                           "--steps", "train_precisions,evaluator"])
    assert os.listdir(out) == ["gpu_smoke.json"]
    report = json.load(open(out / "gpu_smoke.json"))
    assert code == 0 and report["all_ok"] and set(report["steps"]) == {"train_precisions", "evaluator"}
    precisions = report["steps"]["train_precisions"]
    for amp in GPU_SMOKE.PRECISIONS:
        assert precisions[amp]["finite"] and precisions[amp]["img_s"] > 0
        assert precisions[amp]["amp_active"] is False  # amp is ignored on CPU
        assert set(precisions[amp]["losses"]) >= {"loss", "loss_id_global", "loss_pcl_parts"}
    evaluator = report["steps"]["evaluator"]["json"]
    assert evaluator["identical"] is True and evaluator["speedup"] > 0


def test_gpu_smoke_without_cuda_fails_fast_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert GPU_SMOKE.main(["--json", str(tmp_path / "smoke" / "gpu_smoke.json")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no CUDA device") and not (tmp_path / "smoke").exists()
    assert GPU_SMOKE.main(["--device", "cpu", "--steps", "nope"]) == 2
    assert "unknown step 'nope'" in capsys.readouterr().err


def test_gpu_smoke_sh_without_cuda_writes_nothing(tmp_path):
    """The shell entry point on this CPU-only machine: one error line, exit 1, no file under $OUT."""
    import subprocess
    import sys

    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu_smoke.sh")], capture_output=True,
                          text=True, env={**os.environ, "OUT": str(out), "PYTHON": sys.executable,
                                          "CUDA_VISIBLE_DEVICES": ""}, timeout=120)
    assert proc.returncode == 1 and os.listdir(out) == []
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no CUDA device"), proc.stderr


@pytest.mark.parametrize("opts, tokens, c, pool_share", [
    (["profd.clip.name", "tiny_rn", "profd.clip.stride", "16"], 1 + 8 * 4, 512, (0.4, 0.5)),  # C = 32 x 16
    ([], 1 + 4 * 2, 384, (0.03, 0.06)),  # the main job's tiny_rn10: C = 32 x 12, 4 x 2 map
])
def test_backbone_flops_of_the_tiny_clip_resnets(opts, tokens, c, pool_share):
    """The stages and the attention pool add up to the backbone; the pool is its four projections over the
    1 + h x w tokens (C channels, joint space D = 128), exactly."""
    macs = FLOPS.count(opts)
    assert sum(macs[k] for k in (*FLOPS.STAGES, "attention pool")) == macs["backbone"]
    d = 128
    assert macs["attention pool"] == tokens * (3 * c * c + c * d)
    assert pool_share[0] < macs["attention pool"] / macs["backbone"] < pool_share[1]


def test_swapped_trunk_is_timms_basic_block_resnet_under_the_attention_pool(monkeypatch):
    """``main_with_clip_configs.py --trunk 2222-64`` is ResNet-18's trunk (timm's, same outputs given the
    same weights) at the CLIP ResNet's strides, under the config's own attention pool; a second swap
    replaces the first, ``restore_trunk`` undoes it; bad specs stop with one line."""
    import pytest
    import timm
    from open_clip.model import CLIP

    from profd_plugin.modeling.clip_backbone import TINY_RN_CLIP_CONFIG
    from profd_plugin.modeling.clip_resnet import ClipResNetBackbone

    script = load_script("benchmarks/main_with_clip_configs.py")
    for name in ("__init__", "feature_map"):  # use_trunk patches the class: restored after the test
        monkeypatch.setattr(ClipResNetBackbone, name, getattr(ClipResNetBackbone, name))
    monkeypatch.delattr(ClipResNetBackbone, "_plain_methods", raising=False)
    images = torch.randn(2, 3, 128, 64, generator=torch.Generator().manual_seed(0))
    reference = timm.create_model("resnet18", num_classes=0, global_pool="")
    trunk = script.build_trunk((2, 2, 2, 2), 64, True, 32)
    assert [p.shape for p in trunk.parameters()] == [p.shape for p in reference.parameters()]
    # the same network: timm's resnet18 given the same weights
    trunk.load_state_dict(dict(zip(trunk.state_dict(), reference.state_dict().values())))
    torch.testing.assert_close(trunk.eval()(images), reference.eval()(images), rtol=0, atol=0)
    script.use_trunk("2222-64")
    for stride, grid in ((32, (4, 2)), (16, (8, 4))):
        backbone = ClipResNetBackbone(CLIP(**TINY_RN_CLIP_CONFIG).visual, image_size=(128, 64), stride=stride)
        assert {n.split(".")[0] for n, _ in backbone.named_parameters()} == {"visual", "trunk"}
        assert {n.split(".")[0] for n, _ in backbone.visual.named_parameters()} == {"attnpool"}
        assert backbone.feature_map(images).shape == (2, 512, *grid)
        g, patches = backbone(images)
        assert g.shape == (2, 128) and patches.shape == (2, grid[0] * grid[1], 128)
    with pytest.raises(SystemExit, match="its last stage has 256 channels but the attention pool of "
                                         "profd.clip.name takes 512"):
        script.use_trunk("2222-32")
        ClipResNetBackbone(CLIP(**TINY_RN_CLIP_CONFIG).visual, image_size=(128, 64), stride=32)
    weights = []
    for specs in (["1111-64"], ["2222-64", "1111-64"]):  # the second swap replaces the first: same draws
        for spec in specs:
            script.use_trunk(spec)
        torch.manual_seed(2)
        swapped = ClipResNetBackbone(CLIP(**TINY_RN_CLIP_CONFIG).visual, image_size=(128, 64), stride=32)
        weights.append(swapped.trunk.state_dict())
    assert len(swapped.trunk[4]) == 1
    assert all(torch.equal(a, b) for a, b in zip(weights[0].values(), weights[1].values()))
    script.restore_trunk()
    plain = ClipResNetBackbone(CLIP(**TINY_RN_CLIP_CONFIG).visual, image_size=(128, 64), stride=32)
    assert not hasattr(plain, "trunk") and hasattr(plain.visual, "layer4")
    with pytest.raises(SystemExit, match="expected BLOCKS-WIDTH"):
        script.parse_trunk("222-64")
    assert script.parse_trunk("1111-32-z0") == ((1, 1, 1, 1), 32, False)
