"""`python -m pneumo_exp.cli`: the `pneumo-exp` command (a distributed search starts its
chief and workers this way)."""

import sys

from pneumo_exp.cli.main import main

sys.exit(main())
