"""Fixtures for the trainer tests: the tasks tests' throwaway seqio tasks and synthetic text."""

from tests.tasks.conftest import make_documents, make_text_task  # noqa: F401  (pytest fixtures)
