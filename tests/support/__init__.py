"""Test doubles shared by the test suites (never shipped in the wheel).

Import as ``from support.runner import ScriptedRunner``: the conftest.py of a test directory that
uses them puts ``tests/`` on sys.path (see tests/unit/builder/conftest.py).
"""
