"""The web dashboard: server-rendered pages over the same registry, incidents and lifecycle as
every other surface (docs/dashboard.md)."""
