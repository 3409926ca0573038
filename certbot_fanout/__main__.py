import sys

from certbot_fanout.cli import main

sys.exit(main())
