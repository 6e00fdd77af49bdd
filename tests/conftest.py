"""Fixtures shared by the test files."""
import os

import pytest


@pytest.fixture
def reference_dir():
    path = os.environ.get("ROBERTA_REFERENCE_DIR")
    if not path or not os.path.isdir(path):
        pytest.skip("ROBERTA_REFERENCE_DIR is not set (it points at the real roberta-base tokenizer files)")
    return path
