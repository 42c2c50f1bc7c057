"""Engines carry jobs to clients and replies back; the round loop does not know which one runs."""
