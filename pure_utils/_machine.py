"""What a computation ran on (recorded in model cards and executed chapters)."""
import os
import platform
from pathlib import Path


def machine_info(device=None) -> dict:
    """CPU count and model, platform, Python, and the GPU when ``device`` is a CUDA device."""
    cpu = platform.processor() or platform.machine()
    try:  # the CPU model name on Linux
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = dict(cpu_count=os.cpu_count(), cpu=cpu, platform=platform.platform(),
                python=platform.python_version())
    if device is not None and str(device).startswith("cuda"):
        import torch  # heavy: only asked for when a GPU name is wanted

        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info
