"""Disclosure gates, the bundle that leaves the secure side, and its checks."""
