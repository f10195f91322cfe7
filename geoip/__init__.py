"""authgate: geoip."""
