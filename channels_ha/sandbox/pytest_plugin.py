"""pytest fixtures that start real Redis topologies (placeholder until the sandbox lands)."""
