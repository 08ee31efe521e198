"""The plugin's error types: a user mistake or an unusable input, as opposed to a bug.

Every tool catches :class:`ProFDError` and prints its one-line message (``error: ...``) with the exit
code of its class (the traceback goes to the run's log file); any other exception is a bug and keeps its
traceback on the console. This module imports nothing heavy, so config errors are reported before torch
and torchreid are imported.
"""
from __future__ import annotations

__all__ = ["ProFDError", "ConfigError", "DatasetError", "CheckpointError", "NonFiniteLossError",
           "WeightsError", "EXIT_USER_ERROR", "EXIT_CONFIG_ERROR"]

#: exit code of a runtime user error (missing data, unusable checkpoint, non-finite loss, ...)
EXIT_USER_ERROR = 1
#: exit code of a configuration error (unknown key, bad value, unusable output folder)
EXIT_CONFIG_ERROR = 2


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class ProFDError(Exception):
    """A user-fixable problem; the message is one line naming the key, path or value and what to do."""

    exit_code = EXIT_USER_ERROR

    def __str__(self) -> str:
        return _one_line(self.args[0]) if self.args else ""


class ConfigError(ProFDError, ValueError):
    """A bad config key or value (YAML file or command line), found before any data or model is built."""

    exit_code = EXIT_CONFIG_ERROR


class DatasetError(ProFDError, RuntimeError):
    """A missing, empty or malformed dataset file or folder (the message names the path)."""

    def __str__(self) -> str:
        msg = super().__str__()
        if msg.startswith("Caught DatasetError"):  # re-raised by a DataLoader worker with its traceback
            return _one_line(str(self.args[0]).rstrip().splitlines()[-1].split("DatasetError: ", 1)[-1])
        return msg


class CheckpointError(ProFDError, RuntimeError):
    """A file that is not a usable checkpoint for this model (the message names the file and why)."""


class WeightsError(ProFDError, RuntimeError):
    """Pretrained weights that cannot be obtained (offline download, missing file)."""


class NonFiniteLossError(ProFDError, RuntimeError):
    """A loss term became NaN or infinite; training stops instead of corrupting the weights."""
