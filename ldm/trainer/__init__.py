"""Trainer glue around Lightning 2: command line, run directories, callbacks, loggers."""
