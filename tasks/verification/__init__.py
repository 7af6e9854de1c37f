"""Verification: production against staging, on production's fields (`stagesync verify`)."""
