"""The greenpool contention harness and the real-server launchers it shares with the tests.

In a checkout it is the top-level ``stress`` package (``python -m stress``); installed, the same directory is the
``greenpool.stress`` package (``python -m greenpool.stress``, the ``greenpool-stress`` script). Its modules
therefore import each other relatively.
"""
