"""How traffic reaches the live slot: nginx configuration rendered and applied."""
