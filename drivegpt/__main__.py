import sys

from drivegpt.cli import main

sys.exit(main())
