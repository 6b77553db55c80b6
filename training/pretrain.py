"""Multimodal pretraining: ``python training/pretrain.py [flags]`` == ``arbitor pretrain [flags]``.

Flags (spec): --steps --batch --ctx --text-data --text-weight --code-weight --image-weight
--audio-weight --video-weight --eval-interval --log-interval --save-interval --no-save --run, plus
--code-data --image-data --audio-data --video-data --preset --device --seed (``arbitor pretrain --help``).
Example (the spec's smoke run)::

    python training/pretrain.py --steps 1 --batch 1 --ctx 4 --text-weight 1.0 --code-weight 0 \\
        --image-weight 0 --audio-weight 0 --video-weight 0 --eval-interval 0 --log-interval 0 \\
        --save-interval 0 --no-save --run bigint-pretrain-smoke
"""
import sys

from arbitor.cli import main

if __name__ == "__main__":
    sys.exit(main(["pretrain", *sys.argv[1:]]))
