"""matplotlib for files only: the non-interactive Agg backend, imported when a plot is drawn."""


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display, thread-safe figure output)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
