"""Run as ``python -m pure_utils.book``."""
import sys

from .cli import main

sys.exit(main())
