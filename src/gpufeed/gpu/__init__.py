"""The compute backends: the interface (``backend``), how ``--backend`` picks one
(``select``), ``cpu``, ``batched`` and ``persistent``.

Importing this package never imports CuPy; the GPU backends import it lazily
(``cuda_runtime``), so everything here works on a machine without a GPU.
"""
