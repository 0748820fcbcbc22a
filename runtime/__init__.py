"""The reference runtime: family table, model loading, fusion, engines, decoding, backend registry, tasks."""
