"""Verification after every rollback: the restored version checked on a schedule."""
