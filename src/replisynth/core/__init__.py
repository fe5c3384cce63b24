"""Errors, option sets, random streams and worker threads: what every layer uses."""
