"""Frames -> features: the extractor registry and families (extractors), the feature store (store), the extraction engine (extract) and one process's share of it (shard)."""
