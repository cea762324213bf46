"""The attention matrix of one translation: output characters (rows) × input characters (columns).

Drawn on matplotlib's `Figure` with an Agg canvas (never pyplot), as `captioner.viz.overlay` does.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from captioner.dates.model import Translation
from captioner.errors import CaptionerError

SPACE = "␣"  # a space would be an invisible tick label


def save_attention_matrix(result: Translation, path: str | Path) -> Path:
    """Write α (L, T_x) of `result` as a labelled heat map PNG at `path`; returns the path."""
    path = Path(path)
    alphas = result.alphas.float().numpy()
    rows, cols = alphas.shape
    figure = Figure(figsize=(1.2 + 0.32 * cols, 1.2 + 0.32 * rows))
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    image = ax.imshow(alphas, cmap="Blues", vmin=0.0, vmax=1.0, aspect="equal")
    ax.set_xticks(range(cols), [SPACE if ch == " " else ch for ch in result.text], fontfamily="monospace")
    ax.set_yticks(range(rows), list(result.output), fontfamily="monospace")
    ax.tick_params(length=0)
    ax.xaxis.tick_top()
    ax.set_xlabel("input characters")
    ax.set_ylabel("output characters")
    ax.set_title(f"{result.text} → {result.output}", fontsize=10, pad=24)
    figure.colorbar(image, ax=ax, fraction=0.03, pad=0.02, label="α")
    figure.tight_layout()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=100)
    except OSError as error:
        raise CaptionerError(f"cannot write the attention matrix to {path}: {error.strerror or error}") from None
    return path
