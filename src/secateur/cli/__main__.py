import sys

from secateur.cli import main

sys.exit(main())
