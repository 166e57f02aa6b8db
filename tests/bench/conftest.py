"""Everything under tests/bench is a benchmark: excluded from the default run, selected with `-m bench`."""

import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/bench/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.bench)
