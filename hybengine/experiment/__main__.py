"""`python -m hybengine.experiment --config configs/experiments/<name>.yaml` (hybengine/experiment/pipeline.py)."""
import sys

from .pipeline import main

sys.exit(main())
