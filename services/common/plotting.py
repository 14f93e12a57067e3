"""matplotlib for files only: the non-interactive Agg backend, imported when a plot is drawn."""

import io


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display, thread-safe figure output)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def tuning_phases_png(results: dict) -> bytes:
    """A BOLT tuning's plot, one panel per phase: the objective of each completed trial and the
    best so far (`results`: the phase results of its report)."""
    plt = pyplot()

    phases = list(results) or ["(none)"]
    fig, axes = plt.subplots(1, len(phases), figsize=(4.2 * len(phases), 3.4), squeeze=False)
    for ax, phase in zip(axes[0], phases, strict=True):
        points = results.get(phase, {}).get("objective_by_trial", [])
        if points:
            numbers, values = zip(*points, strict=True)
            best, top = [], float("-inf")
            for v in values:
                top = max(top, v)
                best.append(top)
            ax.plot(numbers, values, "o", label="trial")
            ax.step(numbers, best, where="post", color="C3", label="best so far")
            ax.set_ylabel(results[phase]["objective"])
            ax.legend(fontsize=8)
        ax.set_title(phase)
        ax.set_xlabel("trial")
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=100)
    plt.close(fig)
    return image.getvalue()
