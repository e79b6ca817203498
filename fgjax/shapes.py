"""Shape bucketing for jitted functions.

A jitted function compiles once per input shape. Sizes that vary with the data
(events in a window, users in a request, items a user has seen) are rounded up
to a power of two, so a run compiles a handful of shapes and pads by < 2x;
sizes that stay for a whole run (a window's events, the analysis state's
users) to a quarter of an octave, which pads by < 25 %.
"""

from __future__ import annotations


def bucket_size(n: int) -> int:
    """The smallest power of two >= ``max(n, 1)``."""
    return 1 << (max(int(n), 1) - 1).bit_length()


def quarter_octave_size(n: int, minimum: int = 1) -> int:
    """The smallest of 2^j x (1, 1.25, 1.5, 1.75) >= ``n``, at least ``minimum``: four sizes per octave."""
    n = max(int(n), minimum, 1)
    half = bucket_size(n) // 2  # n lies in (half, 2 * half]
    quarter = max(half // 4, 1)
    return half + -(-(n - half) // quarter) * quarter


# Fewest user rows an analysis's state is padded to, and the step above which rows grow in fixed
# multiples rather than by a quarter of an octave (the state is users x K x T values: at a million users
# the padding is memory, at a thousand it is nothing next to a compilation).
MIN_USER_ROWS = 64
USER_ROWS_STEP = 4096


def user_rows(n: int) -> int:
    """Rows of the forgetting analysis's state for ``n`` users: the quarter-octave size (at least
    ``MIN_USER_ROWS``) or the next multiple of ``USER_ROWS_STEP``, whichever pads less (less than 25 % of
    ``n``; past 32,768 users, fewer than 4,096 rows). Logs that differ by a few users then run the same
    compiled programs (a daily rerun on a grown log, through the persistent compilation cache); the
    padding rows have no events, so they never change and never count in the population's terms."""
    return min(quarter_octave_size(n, MIN_USER_ROWS), -(-max(int(n), 1) // USER_ROWS_STEP) * USER_ROWS_STEP)
