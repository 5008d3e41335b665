"""Staged traffic moves: gradual rollbacks and canaries, and the driver that moves their stages."""
