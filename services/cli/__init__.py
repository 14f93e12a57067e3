"""The `promptopt` command line: runs, results and plots, the demo, flow and Neuro-Latent commands."""
