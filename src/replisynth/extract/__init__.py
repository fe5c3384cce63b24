"""Secure side: from the data to a disclosure-safe release per source."""
