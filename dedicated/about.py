"""Package facts. `dedicated` is a namespace package on purpose (see README's Layout section):
the design card's top-level folders `operator/`, `kernels/`, `quantize_job/` are mapped into it as
`dedicated.operator`, `dedicated.kernels`, `dedicated.quantize_job` (pyproject.toml) and carry no
top-level ``__init__.py``, so even with the checkout root on ``sys.path`` (``python -c`` run from
the root) ``import operator`` finds the standard library, and PyPI's ``kernels`` is never shadowed.
"""

__version__ = "0.1.0"
