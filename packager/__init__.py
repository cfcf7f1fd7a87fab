"""packager: on-device deployment bundles for edge boards."""

__version__ = "0.1.0"
