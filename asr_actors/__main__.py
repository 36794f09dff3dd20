"""`python -m asr_actors`: the `asr-actors` command (`asr_actors.cli`)."""

import sys

from asr_actors.cli import main

if __name__ == "__main__":
    sys.exit(main())
