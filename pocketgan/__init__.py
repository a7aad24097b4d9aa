"""pocketgan: the `pocketgan` command. The real work lives in registry/, compression_jobs/, service/."""

__version__ = "0.1.0"
