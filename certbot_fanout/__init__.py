"""Deploy renewed Certbot certificates to every service that uses them, and prove it."""

__version__ = "0.1.0"
