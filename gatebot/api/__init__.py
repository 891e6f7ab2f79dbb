"""gatebot's HTTP surface: one router per concern, composed in gatebot.app."""
