"""Train, validate, test or predict with the Lightning CLI.

python train.py fit --config configs/shapes.yaml
python train.py fit --config configs/coco_resnet101.yaml --data.data_dir /data/coco
"""

import sys

from captioner.commands.train import main

if __name__ == "__main__":
    sys.exit(main(prog="python train.py"))
