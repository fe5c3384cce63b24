"""Outside side: rebuild each source from its release alone."""
