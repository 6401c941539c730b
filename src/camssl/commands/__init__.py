"""The ``camssl`` subcommands. Each module named in :data:`MODULES` registers its own
subcommand(s) with ``add_parser(sub, parents)`` (the parser, its arguments and
``set_defaults(func=...)``); the arguments several commands share are in :mod:`camssl.commands.common`.
"""

MODULES = (
    "camssl.commands.train",
    "camssl.commands.cam",
    "camssl.commands.predict",
    "camssl.commands.export",
    "camssl.experiments.cli",
    "camssl.active.cli",
    "camssl.bench.cli",
    "camssl.commands.download",
)
