"""authgate: login_ui."""
