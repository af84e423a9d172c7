"""Benchmarks and load generation for granite-speech-server."""
