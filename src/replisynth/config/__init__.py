"""The manifest (validated YAML) and the safe formula grammar."""
