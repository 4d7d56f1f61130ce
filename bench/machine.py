"""What the numbers were measured on, and how caches are emptied between measurements.

Benchmarks mean nothing without the machine: core count, memory, CPU model and kernel go into
every JSON document and into BENCHMARKS.md.
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass
from typing import Any

from bench.errors import BenchError

DROP_CACHES = "/proc/sys/vm/drop_caches"


@dataclass(frozen=True)
class Machine:
    cores: int
    cpu_model: str
    memory_bytes: int
    kernel: str
    python: str
    os_release: str
    #: 1, 5 and 15 minute load averages when the run started (a shared machine is noisy)
    load: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @classmethod
    def describe(cls) -> "Machine":
        return cls(
            cores=os.cpu_count() or 1,
            cpu_model=_cpu_model(),
            memory_bytes=os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
            kernel=f"{platform.system()} {platform.release()}",
            python=platform.python_version(),
            os_release=_os_release(),
            load=os.getloadavg(),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        return (f"{self.cores} cores ({self.cpu_model}), {self.memory_bytes / (1 << 30):.1f} GiB RAM, "
                f"{self.kernel}, {self.os_release}, Python {self.python}; "
                f"load average {self.load[0]:.2f} {self.load[1]:.2f} {self.load[2]:.2f} at the start")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _os_release() -> str:
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return "unknown"


def require_root() -> None:
    """FUSE mounts, bind mounts and drop_caches all need root; say so before building anything."""
    if os.geteuid() != 0:
        raise BenchError("the benchmark needs root (FUSE and bind mounts, /proc/sys/vm/drop_caches)")


def drop_caches() -> None:
    """Empty the kernel's page, dentry and inode caches (after a sync, so freshly written files
    are clean and droppable too). Global: it makes the next read of anything come from its
    backing store, which is what "cold" means here on both sides of a comparison."""
    os.sync()
    try:
        with open(DROP_CACHES, "w") as f:
            f.write("3\n")
    except OSError as exc:
        raise BenchError(f"cannot drop caches via {DROP_CACHES}: {exc.strerror}") from None
