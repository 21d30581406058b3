"""``python -m softhebb.cli`` (what torchrun runs: ``torchrun ... -m softhebb.cli train ...``)."""

import sys

from . import main

sys.exit(main())
