"""Helpers that test code shares and that worker processes must be able to import (spawned workers unpickle them by
module name, so they live here rather than in a test module)."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

import numpy as np

from vidcap.extractors.base import ResizeCrop

# What a StallingResizeCrop does to a video of STALL_SIZE frames: "hang" (sleep until killed) or "kill" (SIGKILL
# itself, as the out-of-memory killer would). Read in the worker, which inherits the test's environment.
STALL_ENV = "VIDCAP_TEST_STALL"
STALL_SIZE = (80, 96)  # (height, width): no other test video has it


@dataclass(frozen=True)
class StallingResizeCrop(ResizeCrop):
    """An extractor's shrink (it runs in the decoding worker right after the frames decode) that hangs or kills its
    worker on the video whose frames are STALL_SIZE, while the environment asks for it; otherwise ResizeCrop."""

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        action = os.environ.get(STALL_ENV)
        if action and tuple(frames.shape[1:3]) == STALL_SIZE:
            if action == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            while True:  # "hang": a decoder stuck in a lock looks like this from outside
                time.sleep(60)
        return super().__call__(frames)
