"""Operating a queue from outside the worker: its backlog (``stats``), its dead letters
(``dead``) and least-privilege users (``acl``). Each works from Redis alone."""
