"""Process memory as long runs report it: resident set size now and at its peak, plus MLX's own
allocator figures (what MLX holds for arrays, and its buffer cache), all in MB."""
from __future__ import annotations

import resource
import sys
from pathlib import Path
from typing import Optional


def _proc_status_mb(field: str) -> Optional[float]:
    """A memory line of /proc/self/status (Linux), in MB; None where it cannot be read."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def rss_mb() -> Optional[float]:
    """Current resident set size."""
    return _proc_status_mb("VmRSS")


def peak_rss_mb() -> float:
    """Highest resident set size of this process so far. VmHWM includes the current RSS;
    ru_maxrss (KiB on Linux, bytes on macOS) can lag behind it until memory is unmapped."""
    peak = _proc_status_mb("VmHWM")
    if peak is not None:
        return peak
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def mlx_memory_mb() -> dict:
    import mlx.core as mx

    mb = 1024 * 1024
    return {"mlx_active_mb": round(mx.get_active_memory() / mb, 1),
            "mlx_cache_mb": round(mx.get_cache_memory() / mb, 1),
            "mlx_peak_mb": round(mx.get_peak_memory() / mb, 1)}

