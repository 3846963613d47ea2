"""The greenpool contention harness (``python -m stress``) and the real-server launchers it shares with the tests."""
