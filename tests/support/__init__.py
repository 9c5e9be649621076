"""Helpers shared by the tests and the benchmark: servers, fakes, faults."""
