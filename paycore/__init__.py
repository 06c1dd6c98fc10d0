"""Process-level entry points: the ``paycore`` command, the local stack and the demo.

This is the only package that may import every layer; it holds no payment logic.
"""
