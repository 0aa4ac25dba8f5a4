"""Load for a queue: sample payloads for any op, producers, a worker run as a child,
and ``gpufeed demo``, which checks every result."""
