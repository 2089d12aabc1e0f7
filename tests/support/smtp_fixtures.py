"""pytest fixtures for the real SMTP test servers (see tests/support/smtp.py)."""
