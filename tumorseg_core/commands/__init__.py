"""The ``tumorseg`` command line's subcommands, one file each, plus their shared CLI pieces.

Each command module has ``add_arguments(parser)`` and ``run(args) -> int`` and raises
``TumorSegError`` for user errors (``cli.py`` prints them as one ``error:`` line, exit 2).
Shared pieces: the segment options' flags (:mod:`.segment_options`, the CLI face of
``tumorseg_core.options.SegmentOptions``) and the terminal progress bar (:mod:`.progress`).
Commands hold no engine logic: they parse, call the engine and report.

May import: anything in the engine; nothing in the engine imports commands.
"""
