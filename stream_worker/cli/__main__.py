import sys

from stream_worker.cli import main

sys.exit(main())
