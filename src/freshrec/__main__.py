"""`python -m freshrec ...`: the same as the `freshrec` command."""

import sys

from freshrec.cli import main

sys.exit(main())
