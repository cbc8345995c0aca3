"""The repository: object store, formats, catalog, check and prune."""
