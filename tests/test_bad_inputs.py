"""Bad input gets one clear line and a non-zero exit, and nothing on disk changes; shutdowns keep the work.

One test per case of issue 9's table that is not covered where the feature lives (checkpoint files:
``test_checkpoints.py``; ``tools/check_dataset.py``: ``test_dataset_tools.py``). Each asserts the exit
code, that the message names the key or path, and that the data folder and existing files are unchanged.
"""
import hashlib
import os
import signal
import subprocess
import sys

import pytest
import torch
from conftest import copy_run, tiny_run_opts
from test_main import CONFIG, MAIN, ROOT, run_main

from profd_plugin import interrupt


def digest(folder) -> str:
    """sha256 over every file's relative path and content under ``folder`` ('' if it does not exist)."""
    h = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            path = os.path.join(dirpath, name)
            h.update(os.path.relpath(path, folder).encode() + open(path, "rb").read())
    return h.hexdigest() if os.path.exists(folder) else ""


def one_line(capsys, code, expected_code, *needles):
    err = capsys.readouterr().err.strip().splitlines()
    assert code == expected_code, (code, err)
    assert len(err) == 1 and err[0].startswith("error: "), err
    for needle in needles:
        assert needle in err[0], (needle, err[0])
    return err[0]


@pytest.mark.parametrize("opts, needles", [
    (["data.sources", "[]"], ["data.sources", "at least one"]),
    (["data.targets", "['occluded_dukee']"],
     ["data.targets", "occluded_dukee", "did you mean 'occluded_duke'"]),
    (["train.batch_size", "30"], ["train.batch_size", "30", "multiple of sampler.num_instances (4)"]),
    (["profd.test.distance", "foo"], ["profd.test.distance", "'foo'", "visibility, global, parts"]),
    (["train.lr", "-1"], ["train.lr = -1.0", "> 0"]),
    (["train.max_epoch", "'many'"], ["train.max_epoch", "'many'", "integer"]),
    (["profd.decoder.attention", "hybird"], ["profd.decoder.attention", "did you mean 'hybrid'"]),
    (["profd.train.amp", "fp8"], ["profd.train.amp", "none, bf16, fp16"]),
    (["train.optim", "sgd"], ["train.optim", "adamw"]),  # ProFD trains with AdamW
    (["data.transforms", "['random_flip', 'random_crop', 'flip']"], ["data.transforms", "'flip'"]),
    (["profd.augment.erase_area", "[0.5, 0.1]"], ["profd.augment.erase_area", "min <= max"]),
    (["data.height", "8"], ["data.height", ">= 16"]),
    (["model.name", "resnet05"], ["model.name", "resnet05"]),
    (["train.max_epochs", "1"], ["train.max_epochs", "closest valid keys: train.max_epoch"]),
])
def test_config_errors_stop_before_anything_is_built(synthetic_root, tmp_path, capsys, opts, needles):
    save, before = str(tmp_path / "log"), digest(synthetic_root)
    one_line(capsys, run_main(*tiny_run_opts(synthetic_root, save), *opts), 2, *needles)
    assert not os.path.exists(save) and digest(synthetic_root) == before  # nothing written, nothing changed


def test_yaml_syntax_error_names_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  name: profd\ntrain:\n  lr: [0.1\n")
    one_line(capsys, MAIN.main(["--config-file", str(bad)]), 2, str(bad), "line 5", "YAML syntax error")
    one_line(capsys, MAIN.main(["--config-file", str(tmp_path / "missing.yaml")]), 2, "missing.yaml")


@pytest.mark.parametrize("case", ["file", "under_file", "not_writable"])
def test_unusable_save_dir(synthetic_root, tmp_path, capsys, monkeypatch, case):
    afile = tmp_path / "afile"
    afile.write_text("keep me\n")
    save = {"file": afile, "under_file": afile / "sub" / "log", "not_writable": tmp_path / "ro" / "log"}[case]
    if case == "not_writable":  # root bypasses permission bits: simulate a read-only folder
        (tmp_path / "ro").mkdir()
        from profd_plugin import validation

        real = os.access
        monkeypatch.setattr(validation.os, "access", lambda p, m: False if "ro" in str(p) else real(p, m))
    one_line(capsys, run_main(*tiny_run_opts(synthetic_root, str(save))), 2, "data.save_dir", str(save))
    assert afile.read_text() == "keep me\n" and not (tmp_path / "ro" / "log").exists()


def test_config_error_comes_before_the_heavy_imports(tmp_path):
    """A bad key is reported by a process that never imported torch (a fraction of a second)."""
    code = ("import runpy, sys; sys.argv = ['main.py', '--config-file', %r, 'train.lr', '-1']\n"
            "try:\n    runpy.run_path(%r, run_name='__main__')\n"
            "except SystemExit as e:\n"
            "    print('exit', e.code, 'torch' in sys.modules, 'torchreid' in sys.modules)"
            % (CONFIG, os.path.join(ROOT, "tools", "main.py")))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "exit 2 False False", r.stdout + r.stderr
    assert r.stderr.strip() == "error: train.lr = -1.0: must be > 0"


def test_a_bug_keeps_its_traceback(synthetic_root, tmp_path, monkeypatch):
    """Only the plugin's user errors become one line; anything else is a bug and propagates."""
    from profd_plugin import training

    def bug(*args, **kwargs):
        raise ValueError("a genuine bug")

    monkeypatch.setattr(training, "setup_engine", bug)
    with pytest.raises(ValueError, match="a genuine bug"):
        run_main(*tiny_run_opts(synthetic_root, str(tmp_path / "log")))


def test_profd_engine_with_torchreid_datamanager_says_which_to_use(tmp_path, market_like):
    import torchreid

    from profd_plugin.engine import ProFDEngine
    from profd_plugin.errors import ProFDError

    market_like(str(tmp_path / "Occluded_Duke"))
    dm = torchreid.reid.data.ImageDataManager(
        root=str(tmp_path), sources="occluded_duke", height=32, width=16, workers=0, batch_size_train=4,
        batch_size_test=4, train_sampler="RandomIdentitySampler", num_instances=2)
    with pytest.raises(ProFDError, match="ProFDDataManager") as err:
        ProFDEngine(dm, torch.nn.Linear(2, 2), criterion=None, optimizer=None, use_gpu=False)
    assert "\n" not in str(err.value)


def _signal_at_step(monkeypatch, signum, epoch, step):
    """Make the training loop receive ``signum`` from the OS at a given (epoch, step), 1-based."""
    from profd_plugin.engine import ProFDEngine

    original = ProFDEngine.forward_backward

    def forward_backward(self, data):
        if (self.epoch + 1, self.batch_idx + 1) == (epoch, step):
            os.kill(os.getpid(), signum)  # handled like one from SLURM / timeout / Ctrl-C
        return original(self, data)

    monkeypatch.setattr(ProFDEngine, "forward_backward", forward_backward)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_mid_epoch_keeps_the_work(synthetic_root, trained_run, tmp_path, capsys, monkeypatch, signum):
    save = str(tmp_path / "log")
    folder = os.path.join(copy_run(trained_run, save), "model")  # epoch 1 done; resume it to epoch 2
    first_path = os.path.join(folder, "model.pth.tar-1")
    first = hashlib.sha256(open(first_path, "rb").read()).hexdigest()
    opts = tiny_run_opts(synthetic_root, save, **{"train.max_epoch": 2, "model.resume": "auto"})
    _signal_at_step(monkeypatch, signum, epoch=2, step=2)
    assert run_main(*opts) == 128 + signum
    out = capsys.readouterr().out
    name = signal.Signals(signum).name
    assert f"Interrupted ({name}) after 1 epoch(s)" in out and "epoch 2 is re-run from its start" in out
    assert sorted(os.listdir(folder)) == ["model.pth.tar-1", "model.pth.tar-1-interrupted"]
    interrupted = os.path.join(folder, "model.pth.tar-1-interrupted")
    assert torch.load(interrupted, weights_only=True)["epoch"] == 1
    assert hashlib.sha256(open(first_path, "rb").read()).hexdigest() == first  # the earlier one is untouched
    monkeypatch.undo()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handlers are the process's again
    assert run_main(*opts) == 0  # resume auto continues from the interrupted checkpoint
    assert f'Resumed from "{interrupted}" (epoch 1)' in capsys.readouterr().out
    assert torch.load(os.path.join(folder, "model.pth.tar-2"), weights_only=True)["epoch"] == 2


class _Exited(Exception):
    """Stands for the process ending (``os._exit`` does not return)."""


def test_second_signal_exits_at_once(monkeypatch):
    exits = []

    def fake_exit(code):
        exits.append(code)
        raise _Exited

    monkeypatch.setattr(interrupt.os, "_exit", fake_exit)
    with interrupt.graceful_shutdown(distributed=False):
        with pytest.raises(interrupt.TrainingInterrupted):
            os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(_Exited):  # e.g. while the interrupted checkpoint is being written
            os.kill(os.getpid(), signal.SIGTERM)
    assert exits == [143]
    with interrupt.graceful_shutdown(distributed=True):  # DDP: the first signal only sets the flag
        os.kill(os.getpid(), signal.SIGTERM)
        assert interrupt.stop_requested() == signal.SIGTERM
    assert interrupt.stop_requested() is None
