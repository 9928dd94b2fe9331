"""TorchServe's host system metrics: CPU, memory and disk use of the machine, read with psutil.

TorchServe runs a Python script every ``metric_time_interval`` seconds (60) and shows its last
values as gauges with the labels ``Level="Host"`` and ``Hostname``; torchd reads them when
/metrics is scraped (never older than the scrape) and, with a metric log, writes them there
every ``metric_time_interval`` seconds. Units are TorchServe's: percent, megabytes (MiB) of
memory, gigabytes (GiB) of the disk that holds ``/``. ``disable_system_metrics`` turns them off,
with the GPU ones.
"""
from __future__ import annotations

import psutil

MIB = 1024 * 1024
GIB = 1024 * MIB
DISK_PATH = "/"   # the disk TorchServe reports

# name -> (unit, help), in TorchServe's order
HOST_METRICS: dict[str, tuple[str, str]] = {
    "CPUUtilization": ("Percent", "Percent of the machine's CPU time in use since the last "
                                  "reading."),
    "MemoryUsed": ("Megabytes", "Memory in use on the machine, megabytes (MiB)."),
    "MemoryAvailable": ("Megabytes", "Memory available on the machine, megabytes (MiB)."),
    "MemoryUtilization": ("Percent", "Percent of the machine's memory in use."),
    "DiskUsage": ("Gigabytes", "Space used on the disk holding /, gigabytes (GiB)."),
    "DiskUtilization": ("Percent", "Percent of the disk holding / in use."),
    "DiskAvailable": ("Gigabytes", "Space free on the disk holding /, gigabytes (GiB)."),
}


def read_host_usage() -> dict[str, float]:
    """The machine now, in HOST_METRICS' names and units. CPU use is since the previous reading
    (psutil keeps the last one per process; a process's first reading is 0)."""
    memory = psutil.virtual_memory()
    disk = psutil.disk_usage(DISK_PATH)
    return {
        "CPUUtilization": psutil.cpu_percent(interval=None),
        "MemoryUsed": memory.used / MIB,
        "MemoryAvailable": memory.available / MIB,
        "MemoryUtilization": memory.percent,
        "DiskUsage": disk.used / GIB,
        "DiskUtilization": disk.percent,
        "DiskAvailable": disk.free / GIB,
    }
