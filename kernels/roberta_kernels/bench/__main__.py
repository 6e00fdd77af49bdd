"""`python -m roberta_kernels.bench`: the same as `roberta-scratch kernels bench`."""

import sys

from .cli import main

sys.exit(main())
