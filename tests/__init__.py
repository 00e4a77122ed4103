"""rfd's test suite. Every folder is a package, so test modules in different folders may share a basename
(data/test_registry.py beside models/test_registry.py) and import the shared helpers as ``tests.helpers``."""
