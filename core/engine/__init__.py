"""The image engine: backup (device → repository) and restore (repository → device)."""
