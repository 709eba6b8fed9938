"""`python -m kgc_kd.serve.onnx_export RUN_OR_EXPORT [--stage NAME] [--no-int8]`

An exported stage's two towers as ONNX graphs that ONNX Runtime serves without PyTorch, written once into
`<export>/onnx/`:

    query.onnx, entity.onnx            encoder + the project's pooling (`models.pooling.pool`, L2-normalised):
                                       inputs input_ids, attention_mask, token_type_ids (int64, dynamic batch and
                                       sequence axes), output `vector` (float32, batch x hidden)
    query.int8.onnx, entity.int8.onnx  the same graphs with int8 weights and dynamic int8 activations
    manifest.json                      what they were made from (`serve.digest.model_digest`), how, every file's
                                       bytes and SHA-256, and their measured parity with the torch towers

A tower reads the ids the export's own tokenizer (`<export>/query/`) gives, as `BiEncoder.from_pretrained(export)`
does: a vocabulary-pruned stage's graphs read ids of its pruned tokenizer. A shared encoder is exported once; its
entity files are hard links to (or copies of) the query files.

How: `torch.onnx.export(dynamo=True)`, the exporter PyTorch maintains (the TorchScript one is deprecated), at its
default opset (asking for an older one runs its version converter, which fails on these graphs). int8: ONNX
Runtime's `quantize_dynamic` (weights QInt8 per output channel, activations quantised at run time; the MatMuls
with a weight operand and the Gathers, i.e. the embedding tables too) after its `quant_pre_process` (graph
optimisation and shape inference; its symbolic shape inference is skipped: it cannot complete on these graphs'
attention shapes, and on failing leaves a file in the working directory). Measured on all-MiniLM-L6-v2 over UMLS
(untrained): per-channel weights keep each vector within cosine 0.977 of the fp32 one (per-tensor: 0.905) at the
same size (4x smaller than fp32); `reduce_range` (for CPUs without VNNI) was slightly worse; keeping the FFN output
layers in fp32 raised the worst cosine to 0.988 for 47% more bytes, not worth it where MRR moved by <= 0.001
either way (hits@10 by ~0.01); the pre-processing changed no vector, it saves ~2% of the bytes.

The directory is written under a temporary name inside the export and renamed into place, so a reader sees the
old towers or the new ones. It is reused while its manifest's model digest is the export's and every file has
the size it records; otherwise (another stage's towers copied in, a file damaged, int8 asked of a --no-int8
export) it is exported again, with one line saying why. No Lightning.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kgc_kd.models.pooling import pool
from kgc_kd.runtime.files import confined, current_umask, remove, write_json_atomic
from kgc_kd.runtime.fingerprint import file_digest
from kgc_kd.serve.digest import model_digest

ONNX_DIR = "onnx"
MANIFEST = "manifest.json"
FORMAT = 1  # the manifest's "format": bump when what the directory holds changes
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT = "vector"
TOWERS = ("query", "entity")
EXPORT_PROBE = (2, 8)  # batch x tokens traced by the exporter: small, since tracing time grows with it
PARITY_LENGTHS = (11, 7, 3)  # the parity batch: another batch size and length than the probe, padded rows
FP32_TOLERANCE = 1e-4  # an fp32 graph further than this from its torch tower (max abs, unit vectors) is refused
MAX_SINGLE_FILE = 2**31 - 2**26  # protobuf's 2 GiB limit on one .onnx file, less room for the graph itself
NOTHING_YET = "no ONNX towers yet"  # `onnx_problem` when there is no directory: exported without a line said


def tower_file(tower: str, int8: bool = False) -> str:
    """The file name of a tower: `query.onnx`, `entity.int8.onnx`, ..."""
    return f"{tower}.int8.onnx" if int8 else f"{tower}.onnx"


def export_command(export: Path) -> str:
    return f"python -m kgc_kd.serve.onnx_export {export}"


class PooledTower(nn.Module):
    """One tower as the graph computes it: the encoder's last hidden states pooled (`pool`, L2-normalised), so
    a served vector is exactly what `BiEncoder.encode_query` / `encode_entity` returns."""

    def __init__(self, encoder: nn.Module, pooling: str):
        super().__init__()
        self.encoder, self.pooling = encoder, pooling

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor) -> Tensor:
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return pool(out.last_hidden_state, attention_mask, self.pooling)


def probe_inputs(encoder: nn.Module, lengths: tuple[int, ...], width: int | None = None,
                 seed: int = 0) -> dict[str, Tensor]:
    """A padded batch of random ids the encoder reads (rows of `lengths` real tokens, padded to `width`), with
    segment B (token type 1) in each row's second half where the encoder has two token types (query inputs)."""
    g = torch.Generator().manual_seed(seed)
    width = width or max(lengths)
    vocab = int(encoder.get_input_embeddings().num_embeddings)
    ids = torch.randint(0, vocab, (len(lengths), width), generator=g)
    mask = (torch.arange(width) < torch.tensor(lengths).unsqueeze(1)).long()
    types = torch.zeros_like(ids)
    if int(getattr(encoder.config, "type_vocab_size", 1)) > 1:
        types = ((torch.arange(width) >= (torch.tensor(lengths) // 2).unsqueeze(1)) & mask.bool()).long()
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter's chatter (torchvision ops it skips, axis renames, deprecations inside torch) silenced:
    an export says one line of its own at most."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def export_tower(tower: PooledTower, path: Path) -> int:
    """Write `tower` as one self-contained ONNX file (weights inside) with dynamic batch and sequence axes;
    returns its opset."""
    params = sum(p.numel() * p.element_size() for p in tower.parameters())
    if params > MAX_SINGLE_FILE:
        raise ValueError(f"{path.name}: the encoder's {params / 2**30:.1f} GiB of weights exceed what one ONNX file "
                         "holds (2 GiB); this export path serves smaller encoders")
    probe = probe_inputs(tower.encoder, (EXPORT_PROBE[1], EXPORT_PROBE[1] - 3), seed=1)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    with _quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(tower, tuple(probe[k] for k in INPUTS), str(path), dynamo=True,
                                    external_data=False, input_names=list(INPUTS), output_names=[OUTPUT],
                                    dynamic_shapes={k: {0: batch, 1: seq} for k in INPUTS}, optimize=True,
                                    verbose=False)  # optimize: the default since torch 2.9, not in 2.6
    return int(program.model.opset_imports.get("", 0))  # the default (ai.onnx) domain's version


def quantize_tower(src: Path, dst: Path) -> None:
    """`dst`: `src` with int8 weights (per output channel) and dynamic int8 activations (see the module
    docstring for why these options)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="kgc-kd-onnx-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        quantize_dynamic(str(prepared), str(dst), weight_type=QuantType.QInt8, per_channel=True)


def run_onnx(path: Path, inputs: dict[str, Tensor]) -> Tensor:
    """The vectors an ONNX file computes for `inputs` (a throwaway session: used to measure parity)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return torch.from_numpy(session.run([OUTPUT], {k: inputs[k].numpy() for k in names})[0])


def parity(reference: Tensor, got: Tensor) -> dict[str, float]:
    """How far served vectors are from the torch ones: the largest absolute difference of a component and
    the smallest cosine of a pair (both are unit vectors)."""
    return {"max_abs_diff": float((got - reference).abs().max()),
            "min_cosine": float(torch.nn.functional.cosine_similarity(got, reference, dim=-1).min())}


def write_towers(export: Path, out: Path, digest: str, int8: bool) -> dict[str, Any]:
    """Export the towers of `export` into the (empty) directory `out`, measure them against the torch towers on
    a padded batch of another shape than the probe, and return the manifest (not written)."""
    from kgc_kd.models.biencoder import BiEncoder

    started = time.perf_counter()
    net = BiEncoder.from_pretrained(export)  # eval mode; a pruned export reads its own tokenizer's ids
    encoders = {"query": net.query_encoder, "entity": net.entity_encoder}
    exported = ("query",) if net.shared else TOWERS
    report: dict[str, Any] = {"batch": [len(PARITY_LENGTHS), max(PARITY_LENGTHS)]}
    opset = 0
    for name in exported:
        tower = PooledTower(encoders[name], net.pooling).eval()
        fp32 = out / tower_file(name)
        opset = export_tower(tower, fp32)
        probe = probe_inputs(tower.encoder, PARITY_LENGTHS, seed=2)
        with torch.no_grad():
            reference = tower(**probe)
        report[fp32.name] = parity(reference, run_onnx(fp32, probe))
        if report[fp32.name]["max_abs_diff"] > FP32_TOLERANCE:
            raise RuntimeError(f"{export}: the ONNX {name} tower differs from the torch one by "
                               f"{report[fp32.name]['max_abs_diff']:.2e} (> {FP32_TOLERANCE:g}) on the parity batch; "
                               "nothing was written")
        if int8:
            quantize_tower(fp32, out / tower_file(name, True))
            report[tower_file(name, True)] = parity(reference, run_onnx(out / tower_file(name, True), probe))
    if net.shared:  # one graph serves both sides: the entity files are the query files
        for q8 in ((False, True) if int8 else (False,)):
            _link_or_copy(out / tower_file("query", q8), out / tower_file("entity", q8))
            report[tower_file("entity", q8)] = report[tower_file("query", q8)]
    files = sorted(p.name for p in out.iterdir() if p.is_file())
    return {"format": FORMAT, "model": digest, "opset": opset, "exporter": exporter_versions(),
            "shared": bool(net.shared), "pooling": net.pooling, "dim": int(net.query_encoder.config.hidden_size),
            "inputs": list(INPUTS), "output": OUTPUT, "int8": bool(int8),
            "files": {f: {"bytes": (out / f).stat().st_size, "sha256": file_digest(out / f)} for f in files},
            "parity": report, "seconds": round(time.perf_counter() - started, 1)}


def exporter_versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {"fp32": "torch.onnx.export(dynamo=True)",
            "int8": "onnxruntime.quantization.quantize_dynamic(QInt8, per_channel) after quant_pre_process",
            "torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def _link_or_copy(src: Path, dst: Path) -> None:
    """`dst` a hard link to `src` (no second copy on disk), or a copy where the file system has no links."""
    try:
        os.link(src, dst)
    except OSError:
        import shutil

        shutil.copyfile(src, dst)


def read_manifest(onnx_dir: Path) -> dict[str, Any]:
    """`<onnx_dir>/manifest.json` as a dict; ValueError naming the file where it is not a manifest of this
    format (FileNotFoundError where there is none)."""
    path = onnx_dir / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not JSON ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or \
            not isinstance(manifest.get("files"), dict) or not isinstance(manifest.get("model"), str):
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ValueError(f"{path} is not an ONNX manifest of format {FORMAT} (format {got!r}, or no model/files)")
    return manifest


def short(digest: str) -> str:
    return f"{digest[:12]}…"


def onnx_problem(export: Path, digest: str | None = None, needed: tuple[str, ...] = ()) -> str | None:
    """Why `<export>/onnx` cannot serve `export` as it stands (None: it can): `NOTHING_YET`; no or an unreadable
    manifest; towers of another model (`digest`: the export's `model_digest`, computed when not given); a file of
    `needed` it does not hold; a file missing or of another size than recorded. Sizes only, not SHA-256 (a
    truncated or replaced file changes its size; hashing 100 MB on every start would not be free)."""
    onnx_dir = Path(export) / ONNX_DIR
    if not onnx_dir.exists():
        return NOTHING_YET
    try:
        manifest = read_manifest(onnx_dir)
    except FileNotFoundError:
        return f"{onnx_dir} has no {MANIFEST}"
    except ValueError as err:
        return str(err)
    digest = digest if digest is not None else model_digest(Path(export))
    if manifest["model"] != digest:
        return (f"{onnx_dir} was exported from another model (sha256 {short(manifest['model'])}, this export's "
                f"{short(digest)})")
    for name in needed:
        if name not in manifest["files"]:
            return f"{onnx_dir} has no {name}" + (" (exported with --no-int8)" if ".int8." in name else "")
    for name, info in manifest["files"].items():
        path = onnx_dir / name
        if not path.is_file():
            return f"{path} is missing"
        if path.stat().st_size != info.get("bytes"):
            return f"{path} is {path.stat().st_size} bytes, {MANIFEST} records {info.get('bytes')}"
    return None


def needed_files(int8: bool) -> tuple[str, ...]:
    return tuple(tower_file(t, q8) for q8 in ((False, True) if int8 else (False,)) for t in TOWERS)


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def export_onnx(export: Path, *, int8: bool = True, log: Callable[[str], None] = _say) -> Path:
    """`<export>/onnx/` with the export's towers (and, with `int8`, their int8 variants); returns it. Reused
    without work where current (`onnx_problem` finds nothing); otherwise exported again, `log` (stderr) told
    why in one line, except for a first export. Raises FileNotFoundError for a directory that is not an export,
    PermissionError for a read-only one, OutsideRoot where `onnx` leads out of the export."""
    export = Path(export).absolute()
    if not (export / "biencoder.json").is_file():
        raise FileNotFoundError(f"{export}: not an exported stage (no biencoder.json); give an export directory "
                                "or a run directory")
    out = confined(export, export / ONNX_DIR, "the ONNX towers")
    digest = model_digest(export)
    problem = onnx_problem(export, digest, needed_files(int8))
    if problem is None:
        return out
    if problem != NOTHING_YET:
        log(f"{problem}; exporting the ONNX towers again")
    if not os.access(export, os.W_OK):
        raise PermissionError(f"{export} is read-only: its ONNX towers cannot be written there (copy the export "
                              "somewhere writable, or export it where it was written)")
    tmp = Path(tempfile.mkdtemp(prefix=f".{ONNX_DIR}.", suffix=".tmp", dir=export))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp's 0o700 would hide it from other users of a shared root
        manifest = write_towers(export, tmp, digest, int8)
        write_json_atomic(tmp / MANIFEST, manifest)
        _replace_dir(tmp, out, export, digest, needed_files(int8))
    finally:
        remove(tmp, export, "a temporary ONNX directory", ignore_errors=True)
    return out


def _replace_dir(tmp: Path, out: Path, export: Path, digest: str, needed: tuple[str, ...]) -> None:
    """`tmp` becomes `out`; an existing `out` is moved aside first and removed after. Where another process
    renamed its towers into place in between, theirs are kept if current (ours are dropped)."""
    trash = Path(tempfile.mkdtemp(prefix=f".{ONNX_DIR}.", suffix=".old.tmp", dir=export))
    try:
        if out.exists() or out.is_symlink():
            os.rename(out, trash / ONNX_DIR)
        try:
            os.rename(tmp, out)
        except OSError:
            if onnx_problem(export, digest, needed) is not None:
                raise
    finally:
        remove(trash, export, "the replaced ONNX towers", ignore_errors=True)


EXAMPLES = (
    "python -m kgc_kd.serve.onnx_export runs/<name>                 # the last stage of a run",
    "python -m kgc_kd.serve.onnx_export runs/<name> --stage teacher --no-int8",
    "python -m kgc_kd.serve.onnx_export runs/<name>/stages/pmd2/export",
)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Export (or find current) the towers of one stage and print their files; returns the manifest."""
    from kgc_kd.cli import EXIT_BAD_INPUT, EXIT_OK, exit_statuses, parser
    from kgc_kd.serve.locate import resolve_export

    ap = parser("python -m kgc_kd.serve.onnx_export",
                "Export a stage's query and entity towers (encoder + pooling) to ONNX, with int8 variants, into "
                "<export>/onnx/; reused where current, exported again where another model's or damaged.",
                items=None, statuses=(EXIT_OK, EXIT_BAD_INPUT), examples=EXAMPLES,
                notes=("The towers read ids of the export's own tokenizer (<export>/query/); manifest.json records "
                       "the model digest they were made from, every file's bytes and SHA-256, and the measured "
                       "difference from the torch towers.",),
                docs=("docs/serving.md",))
    ap.add_argument("path", metavar="RUN_OR_EXPORT",
                    help="an exported stage directory, or a run directory (uses its last stage)")
    ap.add_argument("--stage", help="stage name inside a run directory")
    ap.add_argument("--no-int8", action="store_true", help="only the fp32 towers (no int8 variants)")
    args = ap.parse_args(argv)
    with exit_statuses(ValueError):
        out = export_onnx(resolve_export(args.path, args.stage), int8=not args.no_int8)
        manifest = read_manifest(out)
    print(f"{out}  (model sha256 {short(manifest['model'])}, opset {manifest['opset']})")
    width = max(len(name) for name in manifest["files"])
    for name, info in manifest["files"].items():
        print(f"  {name:<{width}}  {info['bytes']:>12,} bytes")
    return manifest


if __name__ == "__main__":
    main()
