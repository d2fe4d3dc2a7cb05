"""`python -m site_director`: the same as the `site-director` script."""

import sys

from site_director.cli import main

sys.exit(main())
