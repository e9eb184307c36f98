"""PNG plots (matplotlib, headless Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from farzi._io import atomic_file


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bar_panels(path: Path, panels: list[dict[str, Any]], title: str) -> Path:
    """One bar chart per panel: ``{"title", "labels", "values", "errors"?, "ylabel", "floor"?, "floor_label"?}``."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        labels, values = panel["labels"], panel["values"]
        colors = ["#c0392b" if lab.startswith("farzi") else "#7f8c8d" for lab in labels]
        ax.bar(range(len(values)), values, yerr=panel.get("errors"), color=colors, capsize=4)
        ax.set_xticks(range(len(values)), labels, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel(panel.get("ylabel", ""))
        ax.set_title(panel.get("title", ""), fontsize=10)
        if panel.get("floor") is not None:
            ax.axhline(panel["floor"], color="#2c3e50", linestyle="--", linewidth=1)
            ax.text(
                len(values) - 0.5, panel["floor"], panel.get("floor_label", ""), ha="right", va="bottom", fontsize=8
            )
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    with atomic_file(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return Path(path)


def line_panels(path: Path, panels: list[dict[str, Any]], title: str) -> Path:
    """One line chart per panel: ``{"title", "series": {name: (xs, ys)}, "xlabel", "ylabel", "logx"?, "logy"?}``."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        for name, (xs, ys) in panel["series"].items():
            ax.plot(xs, ys, marker="o", label=name)
        ax.set_xlabel(panel.get("xlabel", ""))
        ax.set_ylabel(panel.get("ylabel", ""))
        ax.set_title(panel.get("title", ""), fontsize=10)
        if panel.get("logx"):
            ax.set_xscale("log")
        if panel.get("logy"):
            ax.set_yscale("log")
        if panel["series"]:
            ax.legend(fontsize=8)
        else:  # nothing measured for this panel (e.g. an optional peer not installed)
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    with atomic_file(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return Path(path)
