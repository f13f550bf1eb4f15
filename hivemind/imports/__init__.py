"""Answers that already exist: `response_files.py` (records of each accepted layout as rows),
`importer.py` (`import_responses`: a file into a study), `spec_responses.py` (a spec's
`responses:` arms), `external_classes.py` (partitions imported beside the answers)."""
