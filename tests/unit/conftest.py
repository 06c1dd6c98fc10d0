"""Unit-test setup: keep Hypothesis' caches out of the repository.

Hypothesis writes ``.hypothesis/`` under the working directory by default (examples database,
constants and charmap caches). Unit tests use ``database=None`` in their settings; this points
the remaining caches at a temporary directory unless the caller chose one already.
"""

from __future__ import annotations

import os
import tempfile

from hypothesis.configuration import set_hypothesis_home_dir

if not os.getenv("HYPOTHESIS_STORAGE_DIRECTORY"):
    set_hypothesis_home_dir(os.path.join(tempfile.gettempdir(), "paycore-unit-hypothesis"))
