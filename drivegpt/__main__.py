import sys

from drivegpt.cli import main

if __name__ == "__main__":
    sys.exit(main())
