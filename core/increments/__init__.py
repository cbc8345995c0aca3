"""File-level increments: scan a mounted file system, back up what changed, replay onto an image."""
