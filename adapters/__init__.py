"""Framework adapters, each behind its own extra: ``instrument.adapters.<framework>``."""
