"""authgate: policies."""
