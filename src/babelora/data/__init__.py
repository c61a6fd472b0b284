"""Data: manifests, audio I/O and features, the offline corpus, importers, batching."""
