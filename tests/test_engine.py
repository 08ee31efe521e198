"""ProFDEngine: schedule, exact resume, kill -9 recovery, NaN guard, frozen parts, DDP (gloo, 2 processes)."""
import glob
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import copy_run, load_main, run_dir, tiny_run_opts

from profd_plugin.config import setup_cfg
from profd_plugin.engine import NonFiniteLossError, warmup_multi_step_lambda
from profd_plugin.training import run_from_cfg, setup_engine

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "profd_synthetic.yaml")
MAIN = os.path.join(ROOT, "tools", "main.py")


def _cfg(root, save_dir, **overrides):
    return setup_cfg(CONFIG, tiny_run_opts(root, save_dir, **overrides))


def _state(save_dir, epoch):
    return torch.load(os.path.join(run_dir(save_dir), "model", f"model.pth.tar-{epoch}"), weights_only=True)


def _wait_for(pattern, proc, timeout=240):
    """Wait until a file matching the glob ``pattern`` exists (or the process ends); returns the path."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        found = glob.glob(pattern)
        if found:
            return found[0]
        time.sleep(0.2)
    return (glob.glob(pattern) or [None])[0]


def test_official_schedule_warmup_and_steps():
    f = warmup_multi_step_lambda([30, 50], 0.1, warmup_epochs=10, warmup_factor=0.1)
    assert f(0) == pytest.approx(0.1) and f(5) == pytest.approx(0.55) and f(10) == 1.0
    assert f(29) == 1.0 and f(30) == pytest.approx(0.1) and f(50) == pytest.approx(0.01)


def test_resume_continues_exactly(synthetic_root, trained_run, tmp_path):
    straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
    run_from_cfg(_cfg(synthetic_root, straight, **{"train.max_epoch": 2, "profd.train.checkpoint_freq": 1}))
    copy_run(trained_run, split)  # 1 epoch of the same config, then 1 more after a resume
    run_from_cfg(_cfg(synthetic_root, split, **{"train.max_epoch": 2, "model.resume": "auto"}))
    one = torch.load(trained_run["checkpoint"], weights_only=True)["state_dict"]
    straight_one = _state(straight, 1)["state_dict"]
    assert all(torch.equal(straight_one[k], v) for k, v in one.items())
    a, b = _state(straight, 2), _state(split, 2)
    assert a["epoch"] == b["epoch"] == 2
    for k, v in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][k], v, rtol=1e-5, atol=1e-6, msg=k)
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 2
    # and the first epoch really changed the weights (the comparison is not vacuous)
    first = straight_one["backbone.visual.conv1.weight"]
    assert not torch.equal(first, a["state_dict"]["backbone.visual.conv1.weight"])


def test_kill_9_then_resume_from_last_checkpoint(synthetic_root, tmp_path, capsys):
    save = str(tmp_path / "killed")
    opts = tiny_run_opts(synthetic_root, save, **{"train.max_epoch": 40, "profd.train.checkpoint_freq": 1})
    proc = subprocess.Popen([sys.executable, MAIN, "--config-file", CONFIG, *opts],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = _wait_for(os.path.join(save, "profd-train-*", "model", "model.pth.tar-1"), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert first, "no checkpoint before the kill"
    folder = os.path.dirname(first)
    names = [n for n in os.listdir(folder) if n.startswith("model.pth.tar-")]
    for name in names:  # a kill during a save leaves at most a .tmp file, never a broken checkpoint
        torch.load(os.path.join(folder, name), weights_only=True)
    done = max(int(n.split("-")[-1]) for n in names)
    resume = tiny_run_opts(synthetic_root, save, **{"train.max_epoch": done + 1, "model.resume": "auto"})
    assert load_main().main(["--config-file", CONFIG, *resume]) == 0  # in-process: the kill was the point
    assert f"epoch {done})" in capsys.readouterr().out and _state(save, done + 1)["epoch"] == done + 1
    assert os.path.exists(os.path.join(run_dir(save), "results.json"))  # the resumed run's own folder
    assert not [n for n in os.listdir(folder) if n.startswith(".tmp-")]


def test_non_finite_loss_stops_naming_step_and_term(synthetic_root, tmp_path, monkeypatch):
    from profd_plugin.losses import criterion as criterion_mod

    original = criterion_mod.ProFDCriterion.forward

    def poisoned(self, *args, **kwargs):
        losses = original(self, *args, **kwargs)
        losses["loss_visibility"] = losses["loss_visibility"] * float("nan")
        return losses

    monkeypatch.setattr(criterion_mod.ProFDCriterion, "forward", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"epoch 1 step 1: loss_visibility = nan"):
        run_from_cfg(_cfg(synthetic_root, str(tmp_path / "nan")))


def test_frozen_text_encoder_stays_frozen_through_training(synthetic_root, tmp_path):
    save = str(tmp_path / "frozen")
    cfg = _cfg(synthetic_root, save, **{"profd.prompt.train_text_encoder": False, "train.max_epoch": 2,
                                        "profd.train.checkpoint_freq": 1})
    engine, kwargs = setup_engine(cfg)
    engine.run(**kwargs)
    text = engine.core_model.prompt_learner.text_encoder
    # torchreid re-opens every layer at each epoch start; the host fix keeps the frozen ones frozen
    assert all(not p.requires_grad and p.grad is None for p in text.parameters())
    a, b = _state(save, 1)["state_dict"], _state(save, 2)["state_dict"]
    keys = [k for k in a if k.startswith("prompt_learner.text_encoder.")]
    assert keys and all(torch.equal(a[k], b[k]) for k in keys)
    assert not torch.equal(a["prompt_learner.ctx"], b["prompt_learner.ctx"])  # prompts still learn


def _torchrun(script, port, root, save, **overrides):
    """``torchrun --nproc_per_node 2`` of ``script`` on the tiny config, batches of 16."""
    opts = tiny_run_opts(root, save, **{"train.batch_size": 16, **overrides})
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port,
            script, "--config-file", CONFIG, *opts]


TORCHRUN_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def torchrun_job(synthetic_root, tmp_path_factory):
    """One finished 2-epoch job of ``tools/main.py``'s ``main`` on 2 gloo ranks (``tests/ddp_worker.py``,
    which also checks the ranks' banks and weights), shared by the DDP and the torchrun tests (read only):
    ``save_dir`` and the job's ``CompletedProcess``."""
    save = str(tmp_path_factory.mktemp("torchrun") / "log")
    worker = os.path.join(os.path.dirname(__file__), "ddp_worker.py")
    cmd = _torchrun(worker, "29533", synthetic_root, save, **{"train.max_epoch": 2})
    return save, subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=TORCHRUN_ENV)


def test_ddp_two_processes_gloo(torchrun_job):
    save, r = torchrun_job
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "banks in sync" in r.stdout and "rank 1 wrote nothing" in r.stdout
    # main released the process group before interpreter exit on both ranks: no gloo thread left to abort it
    assert r.stdout.count("all threads joined") == 2, r.stdout[-3000:]
    assert os.path.exists(os.path.join(run_dir(save), "results.json"))
    assert _state(save, 2)["epoch"] == 2


def test_torchrun_main_logs_once_and_stops_every_rank_on_sigterm(torchrun_job, synthetic_root, tmp_path):
    save, r = torchrun_job
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    run = run_dir(save)  # one run folder, named by rank 0
    logs = [n for n in os.listdir(run) if n.startswith("train.log")]
    assert len(logs) == 1 and r.stdout.count("| synthetic_occluded") == 1  # rank 0 only
    assert r.stdout.count("Config:") == 1  # rank 1 prints nothing
    assert r.stdout.count("epoch: [1/2]") == 1 and r.stdout.count("epoch: [2/2]") == 1
    assert "deprecated" not in r.stderr and os.path.exists(os.path.join(run, "results.json"))

    # SIGTERM to the whole job (as SLURM or Kubernetes send it): every rank stops at the same step. The
    # resumed job is tools/main.py itself, on a copy of the shared job's run folder.
    save = str(tmp_path / "torchrun")
    run = copy_run({"run_dir": run}, save)
    proc = subprocess.Popen(_torchrun(MAIN, "29535", synthetic_root, save, **{
        "model.resume": "auto", "train.max_epoch": 200, "profd.train.checkpoint_freq": 1}),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=TORCHRUN_ENV, start_new_session=True)
    assert _wait_for(os.path.join(run, "model", "model.pth.tar-3"), proc, timeout=300)
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    interrupted = glob.glob(os.path.join(run, "model", "*-interrupted"))
    assert len(interrupted) == 1, out[-2000:] + err[-2000:]
    assert torch.load(interrupted[0], weights_only=True)["epoch"] >= 3
    assert out.count("Interrupted (SIGTERM)") == 1 and "model.resume" in out
    # no rank died with a traceback (torchrun itself reports the signal it got with one of its own)
    assert "profd_plugin/" not in err and 'main.py", line' not in err, err[-3000:]
