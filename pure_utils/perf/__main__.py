"""Run as ``python -m pure_utils.perf``."""
import sys

from .engine import main

sys.exit(main())
