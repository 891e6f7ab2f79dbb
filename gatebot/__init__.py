"""gatebot: a self-hosted GitOps deploy bot for Docker hosts."""

__version__ = "0.1.0"
