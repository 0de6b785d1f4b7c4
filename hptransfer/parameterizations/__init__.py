"""Registered parameterizations, one module each; every module here is
imported with ``hptransfer.parameterization`` and calls its ``register``."""
