import sys

from babelora.cli.main import main

sys.exit(main())
