"""hope package."""
