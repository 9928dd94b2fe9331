"""Write the MLP of tests/models/mlp_eager in the formats BaseHandler loads, into OUT_DIR.

``generate.py OUT_DIR plain``: mlp.pt (its state_dict), mlp.onnx and expected.json (inputs ->
the eager model's outputs), in seconds. ``generate.py OUT_DIR aoti``: mlp.pt2 (an AOTInductor
package) and mlp.so (the library inside that package, which torch._export.aot_load takes as it
is); the AOTInductor compile builds C++ (15-30 s here), so tests run it once per session. Every
exported form takes any batch size from 1 to 64."""
import json
import sys
import time
import zipfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "mlp_eager"))
from model import MLP  # noqa: E402

INPUTS = [[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 0.25, 2.0], [-3.0, 0.0, 1.5, 0.75]]


def export_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    # The TorchScript-based exporter takes 1 s here, the torch.export-based one 6 s.
    torch.onnx.export(model, (example,), str(path), dynamo=False, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})


def export_aoti(model: torch.nn.Module, example: torch.Tensor, out_dir: Path) -> None:
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(model, (example,), dynamic_shapes={"x": {0: batch}})
    package = torch._inductor.aoti_compile_and_package(program,
                                                       package_path=str(out_dir / "mlp.pt2"))
    with zipfile.ZipFile(package) as archive:
        [library] = [n for n in archive.namelist() if n.endswith(".wrapper.so")]
        (out_dir / "mlp.so").write_bytes(archive.read(library))


def seeded_model() -> torch.nn.Module:
    torch.manual_seed(1234)
    return MLP().eval()


def main(out_dir: Path, part: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    model = seeded_model()
    example = torch.randn(2, 4)
    if part == "plain":
        torch.save(model.state_dict(), out_dir / "mlp.pt")
        with torch.no_grad():
            outputs = model(torch.tensor(INPUTS)).tolist()
        (out_dir / "expected.json").write_text(json.dumps({"inputs": INPUTS,
                                                           "outputs": outputs}))
        export_onnx(model, example, out_dir / "mlp.onnx")
    else:
        started = time.perf_counter()
        export_aoti(model, example, out_dir)
        print(f"AOTInductor export: {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
