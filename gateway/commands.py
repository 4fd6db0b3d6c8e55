"""Sub-commands provided by the parts: carrier simulator, IVR walk-through, prompts, demo."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def add_commands(sub: Any, with_config: Callable[[argparse.ArgumentParser], argparse.ArgumentParser]) -> None:
    pass
