"""The device and dtype names a user may ask for (``--device``, ``--dtype``, the app's menus).

Kept apart from ``device.py`` and free of torch, so that building the CLI's parser
(``bedgen --help``, an argument error) answers in a second instead of importing torch.
"""

from __future__ import annotations

DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")
DTYPE_NAMES: tuple[str, ...] = ("fp32", "bf16", "fp16")  # keys of device.DTYPES, in that order
