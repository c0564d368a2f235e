"""Subcommands of the ``tumorseg`` command line: each has ``add_arguments(parser)`` and ``run(args)``."""
