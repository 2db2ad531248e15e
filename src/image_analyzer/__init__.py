"""image-analyzer: property photos to schema-valid Elephant "Photo Metadata" data."""

__version__ = "0.1.0"
