"""Train the ARB text model: ``python training/text.py [flags]`` == ``arbitor train [flags]``.

Flags (spec): --steps --batch --ctx --eval-interval --run --text-data --preset --group-size
--strength --backend --device --seed --resume (and the rest of ``arbitor train --help``).
Example::

    python training/text.py --steps 300 --batch 16 --ctx 64 --eval-interval 100 --run smoke
"""
import sys

from arbitor.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
