"""Runtime shared by every service: server bootstrap, config, metrics, clients, codec."""
