"""Shape bucketing for jitted functions.

A jitted function compiles once per input shape. Sizes that vary with the data
(events in a window, users in a request, items a user has seen) are rounded up
to a power of two, so a run compiles a handful of shapes and pads by < 2x.
"""

from __future__ import annotations


def bucket_size(n: int) -> int:
    """The smallest power of two >= ``max(n, 1)``."""
    return 1 << (max(int(n), 1) - 1).bit_length()
