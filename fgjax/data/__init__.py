"""Data I/O: synthetic logs, streaming readers with validation, vocabularies, splits."""
