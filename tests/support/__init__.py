"""Helpers shared by the reliability, fuzz, security and scale tests (not collected as tests).

Test modules put ``tests/`` on ``sys.path`` and import ``support.*``: the repository root never
goes on ``sys.path`` (its ``operator/`` and ``kernels/`` folders would shadow real modules).
"""
