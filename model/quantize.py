"""Int8 text encoding for the paths that need no gradients: the encoder as a dynamically quantised ONNX graph.

What is quantised: the transformer's matrix products (weights int8 per output channel, activations uint8 scaled
per call: ONNX Runtime's dynamic quantisation). What is not: the word-embedding table (the lexical channel, the
Integrated Gradients baseline and the input of every removal batch stay exact float32), the pooling, and every
layer of the recommender above the encoder. Integrated Gradients needs gradients and keeps the float encoder;
the int8 one refuses inputs that carry them. The numbers behind the choice are in docs/model.md (bench.realtime).

The checkpoint stays the float one. The int8 graph is derived from it on first use (exported with torch.onnx,
quantised by onnxruntime.quantization) and kept in a cache directory under a key made of the encoder's weights'
checksum and the versions that built it, beside a JSON file holding the graph's own checksum: a graph that does
not match its checksum is derived again, never used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import warnings
from pathlib import Path

import torch
from torch import nn

from model.encoder import TextEncoder
from model.errors import ModelError

QUANTIZE = ("auto", "int8", "none")  # auto: int8 on the CPU, the float encoder on CUDA (bf16 autocast there)
DEFAULT_QUANTIZE = "auto"  # the dashboard's: int8 queries on the CPU measured faster at the same agreement (docs)
CACHE_ENV = "WHYREC_ENCODER_CACHE"  # where derived int8 graphs are kept (default: ~/.cache/whyrec/encoders)
GRAPH_VERSION = 1  # bump when the export or the quantisation settings below change: older graphs are re-derived
_BUILDING = threading.Lock()  # one derivation at a time in a process; across processes the rename is atomic


def resolve_quantize(quantize: str, device: torch.device) -> str:
    """"int8" or "none" for this device. int8 dynamic quantisation is a CPU path: asked for on CUDA, it is refused
    rather than silently dropped (the encoder runs in bf16 there)."""
    if quantize not in QUANTIZE:
        raise ModelError(f"quantize '{quantize}' is not one of {', '.join(QUANTIZE)}")
    if torch.device(device).type != "cpu":
        if quantize == "int8":
            raise ModelError(f"quantize 'int8' is a CPU path; on {device} the encoder runs in bf16: "
                             "use quantize 'auto' or 'none'")
        return "none"
    return "int8" if quantize == "auto" else quantize


def default_cache_dir() -> Path:
    wanted = os.environ.get(CACHE_ENV, "").strip()
    if wanted:
        return Path(wanted)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "whyrec" / "encoders"


class _Output:
    """What a Hugging Face encoder returns, as far as TextEncoder reads it."""

    def __init__(self, last_hidden_state: torch.Tensor) -> None:
        self.last_hidden_state = last_hidden_state


class Int8Transformer(nn.Module):
    """A Hugging Face encoder's call (input ids or input embeddings, attention mask -> last hidden state) answered
    by an int8 ONNX Runtime session. The word-embedding table is the float model's own (shared, not copied)."""

    def __init__(self, transformer: nn.Module, graph_bytes: bytes, graph: Path, checksum: str) -> None:
        super().__init__()
        import onnxruntime

        self.config = transformer.config
        self.embeddings = transformer.get_input_embeddings()
        self.graph, self.checksum = graph, checksum
        options = onnxruntime.SessionOptions()
        # As many threads as torch is given (the app and the benches give one per request); no spinning: on a
        # small shared CPU a spinning worker takes the core another request is waiting for.
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # From the bytes whose checksum was verified, not the path: another process may replace the file.
        self.session = onnxruntime.InferenceSession(graph_bytes, options, providers=["CPUExecutionProvider"])

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None) -> _Output:
        if inputs_embeds is None:
            with torch.no_grad():
                inputs_embeds = self.embeddings(input_ids)  # (B, T, H)
        if torch.is_grad_enabled() and inputs_embeds.requires_grad:
            raise ModelError("the int8 encoder has no gradients: attributions by gradient run on the float encoder")
        if attention_mask is None:
            attention_mask = torch.ones(inputs_embeds.shape[:2], dtype=torch.int64)
        hidden = self.session.run(None, {
            "inputs_embeds": inputs_embeds.detach().cpu().float().contiguous().numpy(),
            "attention_mask": attention_mask.detach().cpu().to(torch.int64).numpy(),
        })[0]
        return _Output(torch.from_numpy(hidden).to(inputs_embeds.device, inputs_embeds.dtype))  # (B, T, H)


def int8_encoder(encoder: TextEncoder, cache_dir: str | os.PathLike | None = None) -> TextEncoder:
    """The same encoder with its transformer in int8 (see the module's docstring); the float one is untouched."""
    transformer = encoder.transformer
    if isinstance(transformer, Int8Transformer):
        return encoder
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = _graph_key(transformer)
    graph, meta = cache / f"{key}.int8.onnx", cache / f"{key}.json"
    with _BUILDING:
        graph_bytes = _cached_graph(graph, meta)
        if graph_bytes is None:
            graph_bytes = _derive(transformer, encoder.max_positions, graph, meta)
    checksum = hashlib.sha256(graph_bytes).hexdigest()
    return TextEncoder(Int8Transformer(transformer, graph_bytes, graph, checksum), encoder.tokenizer)


def _versions() -> dict:
    import onnxruntime

    return {"graph": GRAPH_VERSION, "torch": torch.__version__, "onnxruntime": onnxruntime.__version__}


def _graph_key(transformer: nn.Module) -> str:
    """The encoder's weights (names, shapes and bytes) and the versions that would build its graph."""
    digest = hashlib.sha256(json.dumps(_versions(), sort_keys=True).encode())
    for name, tensor in sorted(transformer.state_dict().items()):
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:20]


def _cached_graph(graph: Path, meta: Path) -> bytes | None:
    """The cached graph when it is there and matches its recorded checksum; None when it must be derived."""
    try:
        expected = json.loads(meta.read_text())["sha256"]
        graph_bytes = graph.read_bytes()
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return graph_bytes if hashlib.sha256(graph_bytes).hexdigest() == expected else None


def _derive(transformer: nn.Module, max_positions: int, graph: Path, meta: Path) -> bytes:
    """Export the transformer from input embeddings, quantise it, and put graph and checksum in place."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=graph.parent, prefix=".derive-") as scratch:
        float_graph, int8_graph = Path(scratch) / "float.onnx", Path(scratch) / "int8.onnx"
        _export(transformer, max_positions, float_graph)
        quiet = logging.getLogger()  # onnxruntime.quantization logs a pre-processing hint on the root logger
        level = quiet.level
        quiet.setLevel(max(level, logging.ERROR))
        try:
            # Per-channel weights: per-tensor ones lose too much on MiniLM (cosine 0.94 against 0.99, bench).
            quantize_dynamic(float_graph, int8_graph, weight_type=QuantType.QInt8, per_channel=True)
        finally:
            quiet.setLevel(level)
        graph_bytes = int8_graph.read_bytes()
        checksum = hashlib.sha256(graph_bytes).hexdigest()
        os.replace(int8_graph, graph)  # atomic: another process reads the old graph or the new one, whole
    staged = meta.with_name(f".{meta.name}.{os.getpid()}.{threading.get_ident()}")
    staged.write_text(json.dumps({"sha256": checksum, **_versions()}, indent=2))
    os.replace(staged, meta)
    return graph_bytes


class _FromEmbeddings(nn.Module):
    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.transformer(inputs_embeds=inputs_embeds, attention_mask=attention_mask).last_hidden_state


def _export(transformer: nn.Module, max_positions: int, target: Path) -> None:
    was_training = transformer.training
    transformer.eval()
    hidden = transformer.config.hidden_size
    example = (torch.randn(2, 8, hidden), torch.ones(2, 8, dtype=torch.int64))
    batch, tokens = torch.export.Dim("batch"), torch.export.Dim("tokens", max=max_positions)
    try:
        # The exporter's own deprecation notices (from torch internals) are not ours to act on; under a test run
        # that makes warnings errors they would stop the export.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(_FromEmbeddings(transformer).eval(), example,
                                        input_names=["inputs_embeds", "attention_mask"], output_names=["hidden"],
                                        dynamic_shapes=({0: batch, 1: tokens}, {0: batch, 1: tokens}),
                                        dynamo=True, external_data=False, verbose=False)
            program.save(str(target), external_data=False)
    except Exception as exc:
        raise ModelError(f"cannot export the encoder to ONNX for int8 encoding ({exc.__class__.__name__}: "
                         f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}); use quantize 'none'"
                         ) from exc
    finally:
        transformer.train(was_training)
