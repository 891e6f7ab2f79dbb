"""The deploy, rollback and reconciliation processes, each a straight line of stages."""
