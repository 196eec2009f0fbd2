"""Job functions for the main job's scheduler tests (module level: spawned workers import them)."""
from __future__ import annotations

import os
import time
from pathlib import Path


def sleep_job(seconds: float, pid_dir: str) -> int:
    """Record this worker's pid in ``pid_dir``, then sleep: stands for an hour-long evaluation."""
    (Path(pid_dir) / str(os.getpid())).write_text("")
    time.sleep(seconds)
    return os.getpid()


def failing_job(delay: float) -> None:
    time.sleep(delay)
    raise ValueError("this job failed")
