import sys

from slim_plugins.cli import main

sys.exit(main())
