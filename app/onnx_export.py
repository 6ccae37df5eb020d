"""ONNX export of a ticket, kept only once ONNX Runtime reproduces it.

`export_onnx` traces an eval-mode model with torch.onnx's dynamo exporter
(torch.export underneath; a dynamic batch dimension), writes it to a
temporary file beside the target, runs `onnx.checker` on it, runs it in ONNX
Runtime (CPU provider) on the check inputs — several batch sizes, so the
dynamic batch is exercised — and compares with the PyTorch model. Only a
file that passes is renamed to the target; otherwise one InvalidInput line and
nothing at the target changes.
"""
import contextlib
import io
import warnings

import torch

from utils.checkpoint import staged_file
from utils.errors import InvalidInput

INPUT_NAME, OUTPUT_NAME = "images", "logits"


def onnx_modules():
    """(onnx, onnxruntime), or a InvalidInput naming the missing package."""
    try:
        import onnx
        import onnxruntime
    except ImportError as err:
        raise InvalidInput(f"ONNX export needs the onnx and onnxruntime packages ({err.name} is missing): "
                        "pip install -r requirements.txt") from None
    return onnx, onnxruntime


def ort_session(path, providers=("CPUExecutionProvider",), threads=None):
    """An ONNX Runtime session on `path` (intra-op threads as torch uses, unless given)."""
    _, ort = onnx_modules()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.log_severity_level = 3  # warnings about unused initializers are not the user's business
    # Its worker threads otherwise spin for a while after each run, taking the cores from whatever runs next:
    # in an alternating benchmark round, the next model (measured: dense PyTorch 121 ms after an ORT call
    # with spinning, 97 ms without, ResNet-18 batch 16, 2 threads).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, options, providers=list(providers))


def export_onnx(model, inputs, path, tolerance=1e-4):
    """Export `model` (eval mode, CPU, fp32) to `path` with a dynamic batch;
    `inputs` are the check batches (the first is the tracing example).
    Returns the largest |ONNX Runtime - PyTorch| over them."""
    onnx, _ = onnx_modules()
    model = model.eval()
    with staged_file(path, ".onnx") as tmp:
        batch = getattr(torch.export.Dim, "DYNAMIC", None) or torch.export.Dim("batch")
        try:
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():  # it narrates its steps
                # prune's masked weights are attributes the exporter reads as constants: what it warns of
                warnings.filterwarnings("ignore", message=".*were assigned during export")
                # optimize=False: onnxscript's graph optimizer (0.7) mis-rewrites the slimmed ResNet's in-place
                # residual sums (ONNX Runtime then differs by ~0.3); ONNX Runtime optimizes the graph at load anyway.
                torch.onnx.export(model, (inputs[0],), tmp, dynamo=True, dynamic_shapes=({0: batch},),
                                  input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], external_data=False,
                                  optimize=False)
        except Exception as err:  # the exporter reports unsupported code with many exception types
            raise InvalidInput(f"ONNX export failed ({type(err).__name__}: {str(err).strip().splitlines()[0]})") from None
        try:
            onnx.checker.check_model(onnx.load(tmp), full_check=True)
        except Exception as err:
            raise InvalidInput(f"the exported ONNX model fails onnx.checker: {str(err).strip().splitlines()[0]}") from None
        session = ort_session(tmp)
        error = 0.0
        with torch.no_grad():
            for x in inputs:
                got = torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0])
                error = max(error, (got - model(x)).abs().max().item())
        if not error < tolerance:
            raise InvalidInput(f"ONNX Runtime's outputs differ from PyTorch's by {error:.2e} (limit {tolerance:.0e}); "
                            "not exported")
    return error
