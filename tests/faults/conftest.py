"""The fault tables' shared set-up (a working bundle, three good cases and their references)."""

from tests.faults.test_faults import env  # noqa: F401  (the fixture, for test_faults_round2.py too)
