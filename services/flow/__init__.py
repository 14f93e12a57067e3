"""EcoFlow's flow service: flow-matching training runs and guided sampling."""
