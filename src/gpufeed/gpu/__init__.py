"""Compute side: the op registry and the compute backends.

Importing this package never imports CuPy; the GPU backends import it lazily,
so everything here works on a machine without a GPU.
"""
