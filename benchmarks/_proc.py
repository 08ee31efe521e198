"""Helpers shared by the benchmark scripts."""


def status_kib(field: str) -> int:
    """A VmXXX field of /proc/self/status in KiB (Linux): VmRSS now, VmHWM the peak so far."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)
