"""Reading a stored parameter checkpoint one layer slice at a time, without restoring it.

Orbax stores each parameter leaf as a TensorStore (zarr) array named by its dotted path inside the
`params` item (in an OCDBT database unless the writer turned it off). Opening those arrays with the
spec Orbax itself uses for reading lets a converter pull out `w_gate[layer]` alone, so exporting a
16B checkpoint never holds more than one stacked slice (plus the storage chunks it overlaps: one
layer's chunk for checkpoints written by `most import-hf`, a trainer's shard-sized chunks, at most
Orbax's 2 GiB, otherwise).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts
from orbax.checkpoint import type_handlers

from most_jax.checkpoint.param_tree import Path_, flatten

_TREE_METADATA = "_METADATA"  # Orbax's per-item tree metadata (JSON); says whether arrays are zarr v2 or v3


class StoredParams:
    """The leaves of one `params` item: shapes and dtypes, and reads of whole leaves or slices."""

    def __init__(self, item_dir: str | Path):
        self.item_dir = Path(item_dir)
        tree = ocp.StandardCheckpointer().metadata(self.item_dir).item_metadata.tree
        self.leaves: dict[Path_, tuple[tuple[int, ...], np.dtype]] = {
            p: (tuple(m.shape), np.dtype(m.dtype)) for p, m in flatten(tree)}
        self._use_ocdbt = type_handlers.is_ocdbt_checkpoint(self.item_dir)
        self._use_zarr3 = bool(json.loads((self.item_dir / _TREE_METADATA).read_text()).get("use_zarr3", False))
        self._context = type_handlers.get_ts_context(use_ocdbt=self._use_ocdbt)
        self._open: dict[Path_, ts.TensorStore] = {}

    def _store(self, path: Path_) -> ts.TensorStore:
        if path not in self._open:
            info = type_handlers.ParamInfo(name=".".join(path), parent_dir=self.item_dir,
                                           is_ocdbt_checkpoint=self._use_ocdbt, use_zarr3=self._use_zarr3,
                                           ts_context=self._context)
            spec = type_handlers.get_json_tspec_read(info, use_ocdbt=self._use_ocdbt)
            self._open[path] = ts.open(ts.Spec(spec), open=True, read=True, context=self._context).result()
        return self._open[path]

    def read_async(self, path: Path_, index: int | None = None) -> ts.Future:
        """Starts reading leaf `path`, or its slice `index` along the leading (layer) axis."""
        store = self._store(path)
        return (store if index is None else store[index]).read()

    def read(self, path: Path_, index: int | None = None) -> np.ndarray:
        return np.asarray(self.read_async(path, index).result())
