"""Helpers shared by the tests (synthetic caches, the tiny pipeline, real-feature loaders); not tests themselves."""
