"""Data: M-BEIR records, readers, writers, validation and ingestion of plain folders and text files."""
