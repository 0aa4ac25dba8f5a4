"""The running worker: ``start`` → supervisor → ingest processes (all Redis I/O: read,
``reclaim``, ``commit``) and the compute process (rings in, backend, rings out)."""
