"""oeleo: move data files from instrument PCs to where they must live.

Importing ``oeleo`` is cheap on purpose (``oeleo --help`` must start fast); the parts live in
their own modules: ``oeleo.workers``, ``oeleo.connectors``, ``oeleo.models``,
``oeleo.checkers``, ``oeleo.schedulers``, ``oeleo.settings``.
"""

__version__ = "1.0.0.dev0"
