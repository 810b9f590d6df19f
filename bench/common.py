"""Shared set-up for the benchmarks: a temporary home with the bench services."""

from __future__ import annotations

import os
import platform
import resource
import statistics
import tempfile
from pathlib import Path

from kos_see.config import validate_config
from kos_see.engine import Engine
from kos_see.home import Home

SERVICES = Path(__file__).parent / "services"


def machine() -> str:
    model = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} cores ({model}), Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}"
    )


def engine(slots: int, **execution: object) -> Engine:
    root = Path(tempfile.mkdtemp(prefix="kos-see-bench-"))
    home = Home(root)
    home.init()
    config = validate_config(
        {
            "execution": {"max_concurrent_tasks": slots, **execution},
            "logging": {"level": "warning"},
        }
    )
    built = Engine.open(home, config)
    for folder in sorted(SERVICES.iterdir()):
        built.registry.add(folder)
    return built


def percentile(values: list[float], q: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
