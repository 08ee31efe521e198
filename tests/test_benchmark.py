"""``tools/benchmark.py`` on the tiny synthetic set: tables, reuse of finished runs, resume, bad input."""
import csv
import glob
import json
import os
import signal

import pytest
from conftest import load_script, tiny_run_opts

from profd_plugin.benchmark import ROW_KEYS, RUN_FILE
from profd_plugin.benchmark.plan import plan_runs, split_opts
from profd_plugin.benchmark.report import aggregate
from profd_plugin.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "profd_synthetic.yaml")
BASELINE = "squeezenet1_1"  # a small built-in: small checkpoints, fast steps


TOOL = load_script("tools/benchmark.py")


def _opts(root, **overrides):
    opts = tiny_run_opts(root, "unused", **overrides)
    i = opts.index("data.save_dir")
    return opts[:i] + opts[i + 2:]  # the benchmark sets data.save_dir itself


def bench(root, output, *models, **overrides):
    return TOOL.main(["--config-file", CONFIG, "--models", *models, "--output", str(output),
                      *_opts(root, **overrides)])


@pytest.fixture(scope="module")
def two_models(synthetic_root, tmp_path_factory):
    """ProFD and a built-in baseline, 1 epoch each, and the console output."""
    out = tmp_path_factory.mktemp("bench")
    assert bench(synthetic_root, out, "profd", BASELINE, **{"baselines:train.optim": "adam"}) == 0
    return out


def test_writes_the_documented_files_and_keys(two_models):
    table = json.load(open(two_models / "benchmark.json"))
    assert list(table) == ["profd", "profd[global]", "profd[parts]", BASELINE]
    for name, row in table.items():
        assert set(ROW_KEYS) <= set(row), name
        assert 0.0 <= row["rank1"] <= 1.0 and 0.0 < row["mAP"] <= 1.0
        assert row["rank1_std"] == 0.0 and row["mAP_std"] == 0.0 and row["runs"] == 1
        assert row["params"] > 0 and row["params_total"] >= row["params"] and row["infer_img_s"] > 0
    for name in ("profd", BASELINE):
        assert table[name]["train_s"] > 0 and table[name]["peak_mem_mb"] > 100  # MiB, includes torch itself
    assert table["profd"]["params"] < table["profd"]["params_total"]  # text encoder, training-only heads
    for name in ("profd[global]", "profd[parts]"):  # evaluation of ProFD's own checkpoint
        assert table[name]["train_s"] is None and table[name]["params"] == table["profd"]["params"]
    rows = list(csv.DictReader(open(two_models / "benchmark.csv")))
    assert [r["model"] for r in rows] == list(table)
    assert float(rows[0]["mAP"]) == pytest.approx(table["profd"]["mAP"])
    md = open(two_models / "benchmark.md").read()
    assert "tools/benchmark.py" in md and "| profd[parts]" in md and f"| {BASELINE}" in md


def test_rows_are_the_runs_results(two_models):
    table = json.load(open(two_models / "benchmark.json"))
    for name, distance in (("profd", "visibility"), ("profd[global]", "global"), ("profd[parts]", "parts")):
        (run_dir,) = table[name]["run_dirs"]
        results = json.load(open(os.path.join(run_dir, "results.json")))["synthetic_occluded"]
        assert (results["rank1"], results["mAP"]) == (table[name]["rank1"], table[name]["mAP"])
        config = open(os.path.join(run_dir, "config.yaml")).read()
        assert f"distance: {distance}" in config
    (baseline_dir,) = table[BASELINE]["run_dirs"]
    config = open(os.path.join(baseline_dir, "config.yaml")).read()
    assert "optim: adam\n" in config and "name: triplet" in config  # per-model option and baseline default
    assert json.load(open(os.path.join(baseline_dir, RUN_FILE)))["epoch_s"].keys() == {"1"}


def test_second_invocation_reuses_every_run(two_models, synthetic_root, monkeypatch, capsys):
    from profd_plugin.benchmark import execute

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was run again")

    before = sorted(os.listdir(two_models))
    table = json.load(open(two_models / "benchmark.json"))
    monkeypatch.setattr(execute, "setup_engine", no_training)
    capsys.readouterr()
    assert bench(synthetic_root, two_models, "profd", BASELINE, **{"baselines:train.optim": "adam"}) == 0
    out = capsys.readouterr().out
    assert out.count("reusing the finished") == 4
    assert sorted(os.listdir(two_models)) == before  # no new run folder
    assert json.load(open(two_models / "benchmark.json")) == table


def _interrupt_in_epoch(monkeypatch, epoch):
    """A real SIGTERM (what ``timeout``, SLURM and Kubernetes send) at the first step of ``epoch`` (1-based)
    of the built-in engine."""
    from profd_plugin.engine import TripletEngine

    original = TripletEngine.forward_backward

    def forward_backward(self, data):
        if self.epoch + 1 == epoch:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, data)

    monkeypatch.setattr(TripletEngine, "forward_backward", forward_backward)


def test_interrupted_benchmark_resumes_in_its_run_folder(synthetic_root, tmp_path, monkeypatch, capsys):
    """SIGTERM in epoch 2, then the same command: the run continues from its checkpoint (that a resumed run
    equals an uninterrupted one is tests/test_engine.py::test_resume_continues_exactly)."""
    out = tmp_path / "interrupted"
    with monkeypatch.context() as m:
        _interrupt_in_epoch(m, 2)
        assert bench(synthetic_root, out, BASELINE, **{"train.max_epoch": 2}) == 128 + signal.SIGTERM
    assert "run the same command again to resume" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the process's handlers are back
    (run_dir,) = glob.glob(str(out / f"{BASELINE}-train-*"))
    assert os.listdir(os.path.join(run_dir, "model")) == ["model.pth.tar-1-interrupted"]
    assert not os.path.exists(os.path.join(run_dir, "results.json"))
    assert json.load(open(os.path.join(run_dir, RUN_FILE)))["epoch_s"].keys() == {"1"}

    assert bench(synthetic_root, out, BASELINE, **{"train.max_epoch": 2}) == 0
    out_text = capsys.readouterr().out
    assert "resuming" in out_text and "Resumed from" in out_text and "(epoch 1)" in out_text
    assert "epoch 1/2 in" not in out_text and "epoch 2/2 in" in out_text  # only the missing epoch ran
    assert glob.glob(str(out / f"{BASELINE}-train-*")) == [run_dir]  # continued in its own folder
    assert os.path.isfile(os.path.join(run_dir, "results.json"))
    record = json.load(open(os.path.join(run_dir, RUN_FILE)))
    assert record["epoch_s"].keys() == {"1", "2"}
    assert record["train_s"] == pytest.approx(sum(record["epoch_s"].values()) + record["memory_init_s"])
    assert json.load(open(out / "benchmark.json"))[BASELINE]["train_s"] == pytest.approx(record["train_s"])


@pytest.mark.parametrize("args, expected", [
    (["--models", "resnet_18"], "unknown model 'resnet_18'"),
    (["--models", "profd", "profd"], "lists 'profd' twice"),
    (["--models", "resnet18", "resnet18:data.height", "32"], "data.height must be the same for every model"),
    (["--models", "resnet18", "osnet:train.lr", "1"], "'osnet' is neither one of --models"),
    (["--models", "resnet18", "model.name", "profd"], "model.name is set by the benchmark"),
    (["--models", "resnet18", "train.lrr", "1"], "unknown config key 'train.lrr'"),
    (["--models", "resnet18", "--seeds", "0"], "--seeds must be >= 1"),
    (["--models", "resnet18", "--target", "market1501"], "--target 'market1501' is not one of"),
    (["--models", "resnet18", "train.lr"], "'key value' pairs"),
    (["--models"], "expected at least one argument"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, args, expected):
    out = tmp_path / "out"
    code = TOOL.main(["--config-file", CONFIG, "--output", str(out), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and err[0].startswith("error:") and expected in err[0], err
    assert not out.exists()


def test_missing_config_file_is_one_line(tmp_path, capsys):
    code = TOOL.main(["--config-file", str(tmp_path / "nope.yaml"), "--models", "profd", "--output",
                      str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "nope.yaml" in err[0]


def test_per_model_options_and_seeds():
    opts = ["train.lr", "0.1", "baselines:train.optim", "adam", "resnet18:train.lr", "0.2",
            "profd:profd.clip.stride", "12"]
    common, per_model = split_opts(opts, ["profd", "resnet18", "osnet_x0_25"])
    assert common == ["train.lr", "0.1"]
    assert per_model == {"profd": ["profd.clip.stride", "12"],
                         "resnet18": ["train.optim", "adam", "train.lr", "0.2"],
                         "osnet_x0_25": ["train.optim", "adam"]}
    specs = plan_runs(CONFIG, ["profd", "resnet18"], ["baselines:train.optim", "adam"], seeds=2, output="o")
    assert [(s.model, s.seed) for s in specs] == [("profd", 1234), ("profd", 1235), ("resnet18", 1234),
                                                  ("resnet18", 1235)]
    assert specs[0].cfg.train.optim == "adamw" and specs[2].cfg.train.optim == "adam"
    assert specs[2].cfg.loss.name == "triplet" and specs[2].cfg.model.pretrained is False
    assert {s.cfg.data.save_dir for s in specs} == {os.path.abspath("o")}
    with pytest.raises(ConfigError, match="profd.augment.pad must be the same"):
        split_opts(["profd:profd.augment.pad", "3"], ["profd"])


def test_aggregate_mean_and_sample_std():
    rows = [{"results": {"t": {"rank1": r1, "mAP": m}}, "run_dir": d,
             "metrics": {"params": 10, "params_total": 12, "infer_img_s": s, "train_s": t, "peak_mem_mb": p}}
            for r1, m, s, t, p, d in ((0.5, 0.4, 100.0, 10.0, 900.0, "a"),
                                      (0.7, 0.6, 300.0, 20.0, 1000.0, "b"))]
    row = aggregate(rows, "t")
    assert row["rank1"] == pytest.approx(0.6) and row["mAP"] == pytest.approx(0.5)
    assert row["rank1_std"] == pytest.approx(0.1414213, rel=1e-5)  # sample std of (0.5, 0.7)
    assert row["mAP_std"] == pytest.approx(0.1414213, rel=1e-5)
    assert (row["infer_img_s"], row["train_s"], row["peak_mem_mb"], row["runs"]) == (200.0, 15.0, 1000.0, 2)
    assert row["run_dirs"] == ["a", "b"]
