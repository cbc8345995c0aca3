"""The repository server: one datastore served over HTTPS to many nodes (``blockvault serve``).

A node authenticates with its token and may back up and restore its own images and
increments only; chunks are stored once per datastore, and a node may reference
only chunks it uploaded in its session or that its own manifests name (the known
chunks). Deleting is the server's: an admin token, or root on the server host.
"""
