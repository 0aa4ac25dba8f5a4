"""The worker: supervisor, ingest processes (all Redis I/O) and the compute process."""
