"""The agent: the job queue in a process that outlives the SSH session, behind a local API.

``server`` runs the queue and answers HTTP on a Unix socket only root can use;
``client`` is what the console and the command line use in place of a queue;
``store`` keeps every job in SQLite, so history survives a restart and a job cut
off by a crash comes back ``interrupted``.
"""
