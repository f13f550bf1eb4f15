"""Scheduled model-zoo scans: `scan.py` (a scan's runs over the zoo), `drift.py` (change between
runs, with its statistics), `report.py` (the scan's page)."""
