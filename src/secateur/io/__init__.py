"""Save and load pruned models without pickle: ``model.safetensors`` + ``pruning.json``.

``save(model, path)`` writes a directory; ``load(path, model=fresh_instance)`` resizes a fresh,
unpruned instance of the same architecture and loads the weights; ``load_state_dict_file`` reads a
plain ``.safetensors`` / ``.pt`` / ``.pth`` state_dict with ``weights_only=True``.
"""

from secateur.io._checkpoint import LoadError, load_state_dict_file
from secateur.io._pruned import load, save
from secateur.io._sparse import load_sparse, save_sparse, sparse_bytes

__all__ = ["LoadError", "load", "load_sparse", "load_state_dict_file", "save", "save_sparse", "sparse_bytes"]
