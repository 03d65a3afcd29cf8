"""Corpus loaders. Each returns the shared `Dialogue`/`Turn` (or `LabelledImage`) types."""
