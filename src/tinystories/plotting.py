"""matplotlib, imported only when a plot is drawn: it is the optional `[report]` extra.

Any module that draws (the report, the attention maps of `interpret heads`)
takes pyplot from here, on the Agg backend (no display needed).
"""

from __future__ import annotations

from typing import Any

from tinystories.errors import UserError

MISSING_NOTE = "plots omitted: matplotlib is not installed (pip install 'tinystories[report]')"


def optional_pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display), or None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend, or a one-line error naming the extra (for stages that must draw)."""
    plt = optional_pyplot()
    if plt is None:
        raise UserError("plots need matplotlib: pip install 'tinystories[report]'")
    return plt


def available() -> bool:
    """Whether matplotlib can be imported."""
    return optional_pyplot() is not None
