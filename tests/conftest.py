import os
import sys
from pathlib import Path

# Make tests/ helper modules importable as plain modules (e.g. `import helpers_models`).
sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("OMP_NUM_THREADS", "2")
