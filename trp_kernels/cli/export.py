"""``python -m trp_kernels export``: a saved model.pt as ONNX and/or a torch.export program
(docs/training.md, "Exporting a trained model")."""

from __future__ import annotations

import argparse

from .options import PROG, UsageError, build_model, input_shape, model_kwargs


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "export", help="export a model.pt written by train or compress to ONNX and/or "
                       "torch.export",
        description="Export a saved model. ONNX files hold plain conv pairs; torch.export "
                    "programs keep the library's low-rank op unless --conv-pairs is given.")
    p.add_argument("file", metavar="MODEL_FILE",
                   help="a model.pt written by train or compress (or export.save_model)")
    p.add_argument("--onnx", help="write an ONNX file here")
    p.add_argument("--program", help="write a torch.export program (.pt2) here")
    p.add_argument("--conv-pairs", dest="conv_pairs", action="store_true",
                   help="torch.export: replace the low-rank op by plain nn.Conv2d pairs")
    p.add_argument("--model", dest="arch",
                   help="package.module:callable that builds the dense model, for a file saved "
                        "without its architecture")
    p.add_argument("--model-kwargs", dest="arch_kwargs", type=model_kwargs, default={},
                   help="keyword arguments of --model as a JSON object")
    p.add_argument("--input-shape", dest="input_shape", type=input_shape,
                   help="C,H,W of one input, for a file that does not record it")
    return p


def run(args: argparse.Namespace) -> int:
    import torch

    from ..compression import OutputPathError, check_output_file, load_file
    from ..compression.export import export_onnx, export_program, load_model
    from ..compression.onnx_extra import require

    targets = [p for p in (args.onnx, args.program) if p]
    if not targets:
        raise UsageError(f"{PROG} export: error: nothing to do; give --onnx and/or --program")
    for option, path in (("--onnx", args.onnx), ("--program", args.program)):
        if path:
            try:
                check_output_file(path, option)
            except OutputPathError as exc:
                raise UsageError(f"{PROG} export: error: {exc}") from None
    try:
        if args.onnx:
            require("onnx", "onnxscript", purpose="--onnx")
        saved = load_file(args.file, "model file", ("format", "state_dict"))
    except ValueError as exc:
        raise UsageError(f"{PROG} export: error: {exc}") from exc
    if args.arch is None and not saved.get("arch"):
        raise UsageError(f"{PROG} export: error: {args.file} names no architecture; give "
                         f"--model package.module:callable (and --model-kwargs) that builds "
                         f"its dense model")
    model = None if args.arch is None else build_model("export", args.arch, args.arch_kwargs)
    try:
        model = load_model(args.file, model)
    except ValueError as exc:
        raise UsageError(f"{PROG} export: error: {exc}") from exc
    shape = args.input_shape or saved.get("input_shape")
    if shape is None:
        raise UsageError(f"{PROG} export: error: {args.file} does not record its input shape; "
                         f"give --input-shape C,H,W")
    example = torch.randn(2, *shape)
    if args.onnx:
        export_onnx(model, example, args.onnx)
        print(f"wrote {args.onnx}")
    if args.program:
        torch.export.save(export_program(model, example, conv_pairs=args.conv_pairs),
                          args.program)
        print(f"wrote {args.program}")
    return 0


