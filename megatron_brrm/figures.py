"""Writing matplotlib figures: one place for the PNG conventions of every report the project draws."""
from __future__ import annotations

import os
from pathlib import Path


def save_figure(fig, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Save ``fig`` (a ``matplotlib.figure.Figure``) to ``path`` (parent folders created) and close it.

    Returns:
        ``Path(path)``.
    """
    import matplotlib.pyplot as plt  # lazy: heavy, only needed on this path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
