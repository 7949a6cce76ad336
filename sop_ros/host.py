"""This host, as reports and local runs need it: what machine a figure was measured on, and free loopback
endpoints for the processes a run starts."""

from __future__ import annotations

import os
import platform
import socket


def machine() -> dict:
    """The machine a report's figures come from."""
    import onnxruntime
    import torch

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def described(m: dict) -> str:
    """A machine() record as a report's sentence says it."""
    return (f"{m['cores']} CPU cores ({m['cpu']}), {m['system']}, Python {m['python']}, torch {m['torch']}, "
            f"GPU: {m['gpu'] or 'none'}")  # fmt: skip


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_endpoint() -> str:
    """A Zenoh endpoint on loopback that nothing listens on now."""
    return f"tcp/127.0.0.1:{free_port()}"
