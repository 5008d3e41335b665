"""Judging live versions: metrics and policy to a verdict (pure), the targets to judge, and
the checker pass."""
