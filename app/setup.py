"""Run set-up shared by the entry scripts: device, data, model, resume file."""
import torch

from models import build_model
from utils.checkpoint import load_file
from app.datasets import load_dataset
from app.distributed import launch_context
from utils.errors import UserError
from utils.runtime import seed_everything, select_device

RESUME_KEYS = ("state", "epoch", "state_dict", "optimizer", "scheduler", "result", "best_sa", "init_weight")


def build(args):
    """(device, data splits, model on device, DistContext or None) for parsed,
    checked args; the model's initial weights depend only on --seed."""
    dist_ctx = launch_context()
    if dist_ctx is None:
        device = select_device(args.gpu)
        where = str(device)
    else:
        device = dist_ctx.device
        where = f"{device} x {dist_ctx.world_size} ranks (torchrun{'; --gpu ignored' if args.gpu is not None else ''})"
    print(f"device: {where} | torch {torch.__version__} | dataset {args.dataset} | arch {args.arch}", flush=True)
    data = load_dataset(args.dataset, args.data)
    seed_everything(args.seed)
    spec = data.spec
    model = build_model(args.arch, spec.num_classes, spec.in_channels, spec.mean, spec.std, spec.imagenet_stem)
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return device, data, model, dist_ctx


def resume_checkpoint(args, in_save_dir, name_hint):
    """The checkpoint --resume continues: --checkpoint, else `in_save_dir`
    (the script's own checkpoint found in --save_dir, or None); UserError
    when there is none or it is not a run checkpoint."""
    path = args.checkpoint or in_save_dir
    if path is None:
        raise UserError(f"--resume: no --checkpoint given and no {name_hint} in --save_dir '{args.save_dir}'")
    ckpt = load_file(path, "--resume checkpoint", args.trust_checkpoint)
    missing = [k for k in RESUME_KEYS if not (isinstance(ckpt, dict) and k in ckpt)]
    if missing:
        raise UserError(f"--resume checkpoint '{path}' lacks {', '.join(missing)}: not a training checkpoint of this tool")
    print(f"resuming from {path} (state {ckpt['state']}, {ckpt['epoch']} epoch(s) done)", flush=True)
    return ckpt
