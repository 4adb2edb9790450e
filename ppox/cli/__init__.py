"""The command line: `ppox train | eval | plot | doctor | presets | llm ...` (the entry point is ppox.cli:main).

Only this package imports this package: the trainers know nothing of their command lines.
"""

from ppox.cli.main import main

__all__ = ["main"]
