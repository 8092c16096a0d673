"""`usiqa-train [supervised|crl|pretrain] [--init CKPT] [--config run.yaml] [--set key=value ...]`; works under torchrun.

Examples:
  usiqa-train --set data=my_data/labels.csv --set out=runs/a --set epochs=30
  usiqa-train crl --set data=sweeps/ --set references=refs/ --set out=runs/crl
  usiqa-train crl --bag sweep.mcap --references refs/ --out runs/crl   (adapt to a target from one recording)
  usiqa-train pretrain --set out=runs/pretrain --set pretrain_steps=100   (USCL-style; us_corpus by default)
  usiqa-train supervised --init runs/pretrain/pretrain.safetensors --set data=labels.csv
  torchrun --nproc_per_node 2 -m usiqa_ros.core.train.cli --config run.yaml
"""

from __future__ import annotations

import argparse
import json
import sys

from usiqa_ros.core.train.config import TrainConfig, load_config


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    mode = "supervised"
    if argv and argv[0] in ("supervised", "crl", "pretrain"):
        mode = argv.pop(0)
    ap = argparse.ArgumentParser(prog=f"usiqa-train {mode}", description=__doc__.split("\n")[0])
    ap.add_argument("--config", help="YAML file with TrainConfig keys")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    ap.add_argument("--init", help="start from this checkpoint (= --set init_checkpoint=...)")
    ap.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    if mode == "crl":  # shortcuts for --set bag=... references=... out=...
        ap.add_argument("--bag", help="rosbag2 recording (an unlabeled sweep) to adapt to")
        ap.add_argument("--references", help="reference views: folder of frames, rosbag2 or saved reference set")
        ap.add_argument("--out", help="run directory (the checkpoint is <out>/last.safetensors)")
    args = ap.parse_args(argv)
    shortcuts = [f"{k}={getattr(args, k)}" for k in ("bag", "references", "out") if getattr(args, k, None)]
    shortcuts += [f"init_checkpoint={args.init}"] if args.init else []
    try:
        cfg: TrainConfig = load_config(args.config, [*args.set, *shortcuts])
    except (ValueError, OSError) as e:
        print(f"usiqa-train: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=1))
        return 0
    if mode == "pretrain":
        from usiqa_ros.core.train.pretrain import train_pretrain

        _, summary = train_pretrain(cfg)
        print(json.dumps({"out": cfg.out, "final_loss": summary["final_loss"], "seconds": summary["seconds"]}))
    elif mode == "crl":
        from usiqa_ros.core.train.crl import train_crl

        try:
            _, summary = train_crl(cfg)
        except ValueError as e:  # bad references / recording (ReferenceError, DatasetError): one message
            print(f"usiqa-train crl: {e}", file=sys.stderr)
            return 2
        print(json.dumps({"out": cfg.out, "last": summary["history"][-1] if summary["history"] else None}))
    else:
        from usiqa_ros.core.train.supervised import train_supervised

        _, summary = train_supervised(cfg)
        print(
            json.dumps({"out": cfg.out, "best_epoch": summary["best_epoch"], "best_val_loss": summary["best_val_loss"]})
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
