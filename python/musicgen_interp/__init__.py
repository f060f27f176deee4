"""MusicGen on onnxruntime with every hook point open to Python: the musicgen-interp runtime as a
Python package (no PyTorch in the loop).

    >>> import musicgen_interp as mi
    >>> model = mi.MusicGen.load("models/tiny")
    >>> def steer(act, ctx):                       # [rows, positions, d_model], borrowed (no copy)
    ...     act[ctx.cond] += 0.5 * direction        # in place; or return a new array
    >>> out = model.generate(["lo-fi piano"], steps=40, hooks={"blocks.1.hook_resid_post": steer})
    >>> out.audio.shape, out.sample_rate, out.codes.shape
    >>> cache = model.run_with_cache(["lo-fi piano"], steps=40, points=["blocks.0.hook_resid_post"])

Hooks are keyed by hook point name (``model.hook_points()``):

- residual points (``embed.hook_out``, ``blocks.L.hook_resid_pre``, ``blocks.L.hook_resid_post``):
  ``fn(act, ctx)`` gets a writable numpy view of the decoder's buffer; in-place edits flow
  downstream; returning an array of the same shape replaces the activation;
- component outputs (``blocks.L.{attn,cross_attn,mlp}.hook_out``) and ``ln_final.hook_normalized``:
  ``fn(act, ctx)`` reads them (read-only arrays); a component is changed before its layer runs by an
  edit hook, ``edit(fn)``, where ``fn(edits, ctx)`` writes ``edits.add`` or ``edits.replace`` under
  ``edits.mask`` (the output becomes ``out * (1 - mask) + replace * mask + add``), or returns an array
  that replaces the whole output;
- a list of callables under one key runs them in order.

``ctx`` says where the hook is: ``ctx.call`` (0 = the prefill, then one per step), ``ctx.past_len``,
``ctx.new_len``, ``ctx.rows``, ``ctx.cond`` / ``ctx.uncond`` (slices of the batch axis: with
guidance the conditional rows come first), ``ctx.layer``, ``ctx.point``.

The rule of borrowed arrays: an activation array is valid during its hook's call only. Keep
``act.copy()`` (or ``act[0].copy()``), never ``act`` or a view of it (``act[0]``, ``act[:, -1]``,
``act.T``). A hook that keeps the array or a view of it ends the generation with a ValueError, and
what it kept is first pointed at a read-only copy of the values at the end of the call, so it stays
safe to read: the array itself, and every view found among the objects Python's garbage collector
tracks (lists, dicts, sets, attributes, closures, tracebacks). A memoryview of the array, or a view
kept only inside something the collector does not track (a numpy object array, a C extension's
object), cannot be moved: the error then says how many such references it could not find, and they
still point at the model's memory, which is overwritten and then freed: do not use them.

An exception in a hook ends the generation and is raised from ``generate`` with its traceback;
Ctrl-C stops a generation between steps (KeyboardInterrupt). The model stays usable afterwards.

Installing: ``scripts/setup.sh`` installs the package into the project's ``.venv``; on its own,
``pip install ./python`` builds it (a Rust toolchain and maturin, which pip fetches). It loads the
onnxruntime library the CLI finds (``find_ort_library``): ``MUSICGEN_INTERP_ORT_LIB``, then the
project's ``.venv``; without either, install onnxruntime's wheel into the same Python
(``pip install './python[runtime]'`` or ``pip install 'onnxruntime>=1.31'``). See python/README.md.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from . import _native
from ._native import ComponentEdits, Edit, HookContext, MusicGenError, evaluate_probes, train_probes

__all__ = [
    "MusicGen",
    "Config",
    "Generation",
    "ActivationCache",
    "HookContext",
    "ComponentEdits",
    "Edit",
    "edit",
    "MusicGenError",
    "train_probes",
    "evaluate_probes",
    "plot_by_layer",
    "find_ort_library",
]

# The oldest onnxruntime whose C API the runtime is built against (the `ort` crate's `api-31`).
ORT_MIN_VERSION = "1.31"

Hook = Callable[[np.ndarray, HookContext], Any]
PluginSpec = "str | tuple[str, Mapping[str, Any] | str | None]"


def edit(fn: Callable[[ComponentEdits, HookContext], Any]) -> Edit:
    """Marks ``fn(edits, ctx)`` as a component edit hook (key it by ``blocks.L.COMPONENT.hook_out``)."""
    return Edit(fn)


def plot_by_layer(path: str | os.PathLike, series: Mapping[str, Sequence[float]], *, title: str = "", y_label: str = "value") -> Path:
    """Writes a PNG of values by layer (0-based), one line per ``{name: [value per layer]}``, in the
    project's plot style."""
    return Path(_native.plot_by_layer(os.fspath(path), [(k, [float(x) for x in v]) for k, v in series.items()], title=title, y_label=y_label))


def find_ort_library() -> str:
    """The onnxruntime library to load: the one the CLI finds (``MUSICGEN_INTERP_ORT_LIB``,
    ``ORT_DYLIB_PATH``, the project's ``.venv`` beside the working directory, the interpreter or
    the source tree the package was built from), else the ``onnxruntime`` wheel of this Python
    (``pip install 'onnxruntime>=1.31'``). A variable naming a file that does not exist is an error,
    not a reason to look elsewhere."""
    try:
        return str(_native.find_ort_library())
    except MusicGenError as cli_error:
        if any(os.environ.get(v) for v in ("MUSICGEN_INTERP_ORT_LIB", "ORT_DYLIB_PATH")):
            raise
        spec = importlib.util.find_spec("onnxruntime")
        for folder in (spec.submodule_search_locations or []) if spec else []:
            capi = Path(folder) / "capi"
            found = sorted(capi.glob("libonnxruntime.so*")) + sorted(capi.glob("libonnxruntime*.dylib"))
            if found:
                return str(found[-1])
        raise MusicGenError(
            f"{cli_error}. This Python has no onnxruntime package either: install its wheel, which ships the library "
            f"(`pip install 'onnxruntime>={ORT_MIN_VERSION}'`, or install this package as `pip install './python[runtime]'`), "
            f"or set MUSICGEN_INTERP_ORT_LIB to a libonnxruntime.so of version {ORT_MIN_VERSION} or newer"
        ) from None


@dataclass(frozen=True)
class Config:
    """The model's sizes, from the bundle's manifest."""

    layers: int
    d_model: int
    heads: int
    head_dim: int
    ffn_dim: int
    codebooks: int
    vocab_size: int
    max_positions: int
    sample_rate: int
    frame_rate: float
    dtype: str
    generation: dict = field(default_factory=dict)


class ActivationCache(dict):
    """``{hook point: array}`` of the conditional rows (``[batch, d_model]`` for ``last`` / ``mean``,
    ``[batch, positions, d_model]`` for ``all``); ``.uncond`` holds the unconditional rows the same
    way (empty without guidance); ``.codes`` the generation's codes."""

    def __init__(self, cond: Mapping[str, np.ndarray], uncond: Mapping[str, np.ndarray], reduction: str, codes: np.ndarray):
        super().__init__(cond)
        self.uncond: dict[str, np.ndarray] = dict(uncond)
        self.reduction = reduction
        self.codes = codes

    def stack(self, points: Iterable[str] | None = None, uncond: bool = False) -> np.ndarray:
        """The points' arrays stacked on a new first axis (``[points, batch, ...]``), as
        ``generate --save-residuals`` saves them."""
        source = self.uncond if uncond else self
        return np.stack([source[p] for p in (list(points) if points is not None else list(self))])


@dataclass
class Generation:
    """What ``MusicGen.generate`` returns."""

    audio: np.ndarray | None  # [batch, samples] float32 (None with decode=False)
    sample_rate: int
    codes: np.ndarray  # [batch, codebooks, frames] int64
    steps: int
    decode_seconds: float
    residuals: ActivationCache | None = None


def _plugins(plugins: Sequence[Any] | None) -> list[tuple[str, Any]] | None:
    if plugins is None:
        return None
    out = []
    for p in plugins:
        if isinstance(p, (str, os.PathLike)):
            out.append((os.fspath(p), None))
        else:
            spec, settings = p
            out.append((os.fspath(spec), settings))
    return out


class MusicGen:
    """A loaded bundle: text encoder, decoder with hook points, EnCodec, on one onnxruntime provider."""

    def __init__(self, native: Any):
        self._m = native

    @classmethod
    def load(cls, path_or_hub_id: str | os.PathLike, device: str = "auto", *, threads: int = 0, ort_library: str | None = None,
             verify_all: bool = False, plain_graphs: bool = False) -> "MusicGen":
        """Loads a bundle folder, or a checkpoint folder / hub id (exported once into the models folder
        with onnx/export.py). ``device``: ``auto`` (CUDA when the library has it and a GPU answers),
        ``cpu`` or ``cuda``. The onnxruntime library is loaded once per process."""
        library = ort_library or find_ort_library()
        return cls(_native.MusicGen.load(os.fspath(path_or_hub_id), device, threads, library, verify_all, plain_graphs))

    @property
    def config(self) -> Config:
        m = self._m.manifest
        d, a = m["decoder"], m["audio"]
        return Config(layers=d["num_layers"], d_model=d["d_model"], heads=d["num_heads"], head_dim=d["head_dim"], ffn_dim=d["ffn_dim"],
                      codebooks=d["num_codebooks"], vocab_size=d["vocab_size"], max_positions=d["max_position_embeddings"],
                      sample_rate=a["sample_rate"], frame_rate=a["frame_rate"], dtype=m["dtype"], generation=m["generation"])

    @property
    def provider(self) -> str:
        """The execution provider the graphs run on (and why not CUDA, when ``auto`` fell back)."""
        return self._m.provider

    @property
    def path(self) -> Path:
        return Path(self._m.path)

    @property
    def ort_library(self) -> str:
        return str(self._m.ort_library)

    def hook_points(self) -> list[str]:
        """Every hook point name, in the order a forward visits them."""
        return self._m.hook_points()

    def residual_points(self) -> list[str]:
        """``embed.hook_out`` and every ``blocks.L.hook_resid_post``: what ``generate --save-residuals`` saves."""
        return [p for p in self.hook_points() if p == "embed.hook_out" or p.endswith(".hook_resid_post")]

    def generate(self, prompts: str | Sequence[str], duration: float | None = None, steps: int | None = None, audio: str | os.PathLike | None = None,
                 top_k: int | None = None, temperature: float | None = None, guidance_scale: float | None = None, seed: int = 0,
                 hooks: Mapping[str, Hook | Edit | Sequence[Hook | Edit]] | None = None, plugins: Sequence[Any] | None = None,
                 residuals: bool | str | None = None, *, audio_start: float = 0.0, audio_duration: float | None = None,
                 decode: bool = True) -> Generation:
        """Generates one clip per prompt. ``duration`` seconds (default 8) or ``steps`` decoder steps;
        ``audio``: a file to continue; sampling settings default to the bundle's; ``hooks``: see the
        module docs; ``plugins``: ``[("steering", {...settings}), ("path/to/libmine.so", {...})]`` as
        ``run`` loads them; ``residuals``: ``True`` / ``"last"`` / ``"mean"`` / ``"all"`` records
        every layer's residual (``generation.residuals``)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        reduction = "last" if residuals is True else residuals
        points = self.residual_points() if reduction else None
        return self._generate(prompts, steps, duration, audio, audio_start, audio_duration, top_k, temperature, guidance_scale, seed,
                              hooks, plugins, points, reduction or "last", decode)

    def run_with_cache(self, prompts: str | Sequence[str], points: Sequence[str] | None = None, reduction: str = "last", *,
                       decode: bool = False, **generate_args: Any) -> ActivationCache:
        """Generates and returns the activations at ``points`` (default: ``residual_points()``),
        reduced over positions: ``last``, ``mean`` or ``all``; conditional rows in the cache,
        unconditional ones in ``cache.uncond``. Takes ``generate``'s other arguments."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        points = list(points) if points is not None else self.residual_points()
        g = generate_args
        out = self._generate(prompts, g.pop("steps", None), g.pop("duration", None), g.pop("audio", None), g.pop("audio_start", 0.0),
                             g.pop("audio_duration", None), g.pop("top_k", None), g.pop("temperature", None), g.pop("guidance_scale", None),
                             g.pop("seed", 0), g.pop("hooks", None), g.pop("plugins", None), points, reduction, decode)
        if g:
            raise TypeError(f"run_with_cache() got unexpected arguments {sorted(g)}")
        return out.residuals

    def _generate(self, prompts, steps, duration, audio, audio_start, audio_duration, top_k, temperature, guidance_scale, seed, hooks, plugins,
                  points, reduction, decode) -> Generation:
        if hooks is not None and not isinstance(hooks, Mapping):
            raise TypeError("hooks is a dict {hook point name: callable}")
        r = self._m.generate(prompts, steps=steps, duration=duration, audio=None if audio is None else os.fspath(audio), audio_start=audio_start,
                             audio_duration=audio_duration, top_k=top_k, temperature=temperature, guidance_scale=guidance_scale, seed=seed,
                             hooks=dict(hooks) if hooks is not None else None, plugins=_plugins(plugins), cache_points=points,
                             reduction=reduction, decode=decode)
        cache = ActivationCache(r.cache, r.uncond_cache, reduction, r.codes) if points is not None else None
        return Generation(audio=r.audio, sample_rate=r.sample_rate, codes=r.codes, steps=r.steps, decode_seconds=r.decode_seconds, residuals=cache)

    def decoder_lens(self, config: str | os.PathLike) -> dict:
        """``decoder-lens --config CONFIG`` on this model (its ``model:`` key is not reloaded); returns
        the output folder, clip count, self-similarity ``[layers, layers]`` and NDCG lists when judged."""
        return self._m.decoder_lens(os.fspath(config))

    def intervene(self, config: str | os.PathLike, shard: str = "0/1") -> dict:
        """``intervene --config CONFIG`` on this model (resumable, shardable); returns the report's counts."""
        return self._m.intervene(os.fspath(config), shard)

    def extract(self, output_dir: str | os.PathLike, *, data_dir: str | os.PathLike | None = None, prompts: str | os.PathLike | None = None,
                **settings: Any) -> dict:
        """``extract`` from an audio folder (``data_dir``) or a prompt set (``prompts``: CSV ``text,label``):
        residuals per segment (resumable), merged into ``residuals_cond.npy`` / ``residuals_uncond.npy`` /
        ``labels.npy``, which the result also holds. Settings as the CLI's flags: ``labels``,
        ``max_samples``, ``steps``, ``reduction``, ``segment_seconds``, ``min_seconds``,
        ``prompt_template``, ``top_k``, ``temperature``, ``guidance_scale``, ``seed``, ``shard``,
        ``batch_size`` (segments per generation; ``None``, the default, sizes it to the free memory)."""
        return self._m.extract(os.fspath(output_dir), data_dir=None if data_dir is None else os.fspath(data_dir),
                               prompts=None if prompts is None else os.fspath(prompts), **settings)

    def __repr__(self) -> str:
        return repr(self._m)
