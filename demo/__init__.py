"""The channels-ha demo: collaborative notes that keep working while Redis fails over.

``./scripts/demo`` runs it (``python -m demo.run``); see ``demo/README.md``.
"""
