"""Tests against a real 3-node MariaDB Galera cluster (see conftest.py)."""
