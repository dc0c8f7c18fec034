"""Run as ``python -m pure_utils.book``."""
import sys

from .build import main

sys.exit(main())
