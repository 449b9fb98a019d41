import sys

from nfp.cli import main

sys.exit(main())
