"""The Neuro-Latent service: soft-prompt rewriter training runs, rewrites and feedback."""
