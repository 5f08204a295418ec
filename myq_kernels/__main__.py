"""python -m myq_kernels [COMMAND]: with no arguments, the backends and an op check; see myq_kernels.cli."""
import sys

from .cli import main

sys.exit(main())
