"""sealserve: serverless inference where only an attested runtime sees plaintext."""

__version__ = "0.1.0"

__all__ = ["__version__"]
