"""`python -m epp` = the `epp` console script."""

import sys

from epp.cli import main

sys.exit(main())
