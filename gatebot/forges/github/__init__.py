"""GitHub: webhook verification and parsing (sansio)."""
