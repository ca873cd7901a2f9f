#!/usr/bin/env python
"""Train and evaluate FEC detectors with Detectron2 (the ``tools/train_net.py`` command line).

    python d2_plugin/train_net.py --config-file configs/detectron2/mask_rcnn_fec_s_fpn_1x_coco.yaml \
        --num-gpus 4 MODEL.WEIGHTS /path/to/fec_small.pth
    python d2_plugin/train_net.py --config-file ... --resume      # continue from OUTPUT_DIR/last_checkpoint
    python d2_plugin/train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/model_final.pth
    python d2_plugin/train_net.py --config-file configs/detectron2/mask_rcnn_fec_s_fpn_1x_coco.yaml \
        --eval-only MODEL.WEIGHTS mask_rcnn_fec_small_fpn_1x_coco.pth   # an official mmdet COCO checkpoint

Also ``python -m d2_plugin.train_net``. The work is done by :func:`d2_plugin.trainer.main`; this script
only parses the arguments and launches it on every process.
"""
from detectron2.engine import default_argument_parser, launch

from d2_plugin.trainer import main


def invoke_main() -> None:
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))


if __name__ == "__main__":
    invoke_main()
