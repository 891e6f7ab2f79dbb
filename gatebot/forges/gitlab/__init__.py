"""GitLab: webhook verification and parsing (sansio)."""
