"""Phase 1, data: raw formats in (``ingest``), sharded 2D slice datasets out (``preprocess``, ``dataset``),
and the built-in phantom and fake raw datasets that tests and the demo run on."""
