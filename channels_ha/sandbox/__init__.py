"""Real Redis topologies on loopback ports, for tests, demos and benchmarks."""
