"""Serving a finished stage: its entity vectors and index (`vectors`, `index`), its ONNX towers
(`onnx_export`, `onnx_runtime`), the variants a stage is served in (`variants`) and their measurement
(`bench`, entry point `python -m kgc_kd.serve_bench`). No Lightning."""
